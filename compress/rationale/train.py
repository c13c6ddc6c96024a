"""Rationale distillation: the student learns the answer and each teacher's rationale, each under its
own task prefix, with the distillation trainer (compress.distill.trainer) on a weighted corpus.

Distilling Step-by-Step (one teacher) and TinyLLM (several): for every training record,
    [answer] <problem>             -> " <answer>"                       weight 1
    [explain:<teacher>] <problem>  -> " <teacher's rationale>"          weight alpha_teacher
one example per window (right-padded), the loss L = L_answer + sum_m alpha_m * L_rationale_m with
each L the mean NLL of its target tokens (losses.weighted_cross_entropy). At inference only the
`[answer]` prefix is used: no rationale is generated. How choices are listed and what the answer
target is follows the answer format (compress.rationale.formats: "(d) math problem" or "math problem").
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import torch

from compress.data import Corpus
from compress.errors import SlimkitError
from compress.evaluate import adds_bos
from compress.rationale.formats import DEFAULT_FORMAT, answer_target, check_format, choices_line
from compress.rationale.tasks import TaskRecord

ANSWER = "[answer]"


def explain_prefix(teacher: str) -> str:
    return f"[explain:{teacher}]"


def problem_text(record: TaskRecord, fmt: str = DEFAULT_FORMAT) -> str:
    """The problem as the student sees it (no answer, no rationale), its choices listed as FMT lists them."""
    parts = [f"Context: {record.context}\n"] if record.context else []
    parts.append(f"Question: {record.question}\n")
    return "".join(parts) + choices_line(record, fmt)


def answer_prompt(record: TaskRecord, fmt: str = DEFAULT_FORMAT) -> str:
    return f"{ANSWER} {problem_text(record, fmt)}Answer:"


def explain_prompt(record: TaskRecord, teacher: str, fmt: str = DEFAULT_FORMAT) -> str:
    return f"{explain_prefix(teacher)} {problem_text(record, fmt)}Explanation:"


def _example(tokenizer: Any, prompt: str, target: str, weight: float, seq_len: int) -> tuple[list[int], list[float]] | None:
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    p = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(p) + len(t) > seq_len:
        return None  # too long for a window: counted and reported by the caller
    return p + t, [0.0] * len(p) + [weight / len(t)] * len(t)


def build_corpus(records: Sequence[TaskRecord], rationales: dict[str, dict[str, str]], alphas: dict[str, float],
                 tokenizer: Any, seq_len: int, heldout_fraction: float = 0.05, seed: int = 0,
                 answer_format: str = DEFAULT_FORMAT) -> tuple[Corpus, dict]:
    """Weighted prompt -> target windows: one answer example per record and one rationale example per
    (record, teacher with alpha > 0 and a rationale). Held-out windows are answer examples of held-out records.
    ANSWER_FORMAT (compress.rationale.formats) decides how choices are listed and what the answer target is."""
    fmt = check_format(answer_format)
    rng = random.Random(seed)
    order = list(records)
    rng.shuffle(order)
    n_held = max(1, int(len(order) * heldout_fraction)) if heldout_fraction > 0 and len(order) > 1 else 0
    held, train = order[:n_held], order[n_held:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    counts = {"answer": 0, **{f"explain:{t}": 0 for t in alphas}, "too_long": 0}

    def pack(examples: list[tuple[list[int], list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(examples), seq_len), pad, dtype=torch.long)
        w = torch.zeros((len(examples), seq_len), dtype=torch.float32)
        for i, (x, y) in enumerate(examples):
            ids[i, :len(x)] = torch.tensor(x)
            w[i, :len(y)] = torch.tensor(y)
        return ids, w

    def examples(recs: Sequence[TaskRecord], with_rationales: bool) -> list:
        out = []
        for r in recs:
            items = [("answer", answer_prompt(r, fmt), answer_target(r, fmt), 1.0)]
            if with_rationales:
                for teacher, alpha in alphas.items():
                    text = (rationales.get(r.id) or {}).get(teacher) or (r.rationales or {}).get(teacher)
                    if alpha > 0 and text:
                        items.append((f"explain:{teacher}", explain_prompt(r, teacher, fmt), text, alpha))
            for key, prompt, target, weight in items:
                ex = _example(tokenizer, prompt, target, weight, seq_len)
                if ex is None:
                    counts["too_long"] += 1
                    continue
                if with_rationales:
                    counts[key] += 1
                out.append(ex)
        return out

    train_ex, held_ex = examples(train, True), examples(held, False)
    if not train_ex:
        raise SlimkitError("no training example fits --seq-len; raise it or check the task file")
    train_ids, train_w = pack(train_ex)
    held_ids, held_w = pack(held_ex) if held_ex else (train_ids[:0], train_w[:0])
    source = f"{len(train)} records, teachers {', '.join(f'{t} (alpha {a:g})' for t, a in alphas.items()) or 'none'}"
    return Corpus(train_ids, held_ids, source, train_w, held_w), counts


def train_rationale(student: str | Path, records: Sequence[TaskRecord], rationales: dict[str, dict[str, str]],
                    alphas: dict[str, float], out: str | Path, cfg: Any, resume: bool = False,
                    progress: bool = True, answer_format: str = DEFAULT_FORMAT) -> Any:
    """Multi-task rationale distillation of STUDENT on RECORDS (label-only when `alphas` is empty), with
    answers in ANSWER_FORMAT. The format is recorded in the checkpoint's rationale stage (only when it is
    not the default, so that runs begun before formats existed still resume), where evaluation finds it."""
    from compress.checkpoint import load
    from compress.distill.trainer import distill

    check_format(answer_format)
    tokenizer = load(student).tokenizer
    corpus, counts = build_corpus(records, rationales, alphas, tokenizer, cfg.seq_len, cfg.heldout_fraction, cfg.seed,
                                  answer_format)
    stage = ("rationale", {"alphas": dict(alphas), "records": len(records), "examples": counts,
                           **({"answer_format": answer_format} if answer_format != DEFAULT_FORMAT else {})})
    return distill(student, [], out, cfg, corpus=corpus, stage=stage, resume=resume, progress=progress)
