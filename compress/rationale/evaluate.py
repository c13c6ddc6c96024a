"""Task evaluation of a student trained with rationale distillation (or any causal LM): the
`[answer]` prompt only, no rationale generated.

- exact match: greedy generation after the answer prompt, parsed with the task's answer parser
  (text format: compared with the gold choice's text);
- choice accuracy (multiple choice): the choice whose answer has the highest score after the prompt:
  letter format, the log-likelihood of " (x) choice" summed over its tokens (as lm-eval-harness scores
  choices); text format, the mean log-likelihood per token of " choice" (compress.rationale.formats).

A student is scored in the answer format it was trained in unless the caller names one. Evaluation
runs on CUDA when one is available (the model is moved there), as training does.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from compress.evaluate import adds_bos
from compress.rationale.formats import (CHOICE_SCORE, DEFAULT_FORMAT, check_format, choice_score, choice_targets,
                                        greedy_correct, trained_format)
from compress.rationale.tasks import TaskRecord
from compress.rationale.train import answer_prompt


def _ids(tokenizer: Any, text: str, bos: bool) -> list[int]:
    return ([tokenizer.bos_token_id] if bos else []) + tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


@torch.no_grad()
def greedy_and_scores(model: Any, prompt: list[int], targets: list[list[int]], eos: set[int],
                      max_new_tokens: int) -> tuple[list[int], list[float]]:
    """The greedy continuation of PROMPT (up to EOS or MAX_NEW_TOKENS) and the summed log-likelihood of
    each of TARGETS after it. The prompt is run once: the targets are scored as one batch on a copy of
    its KV cache (right-padded; the model is causal, so padding never reaches a scored position). When
    greedy decoding would produce a target and then stop (argmax = each of its tokens, then EOS), that
    scoring pass already is the greedy decode; otherwise it decodes token by token on the cache. A CPU
    decode step costs a whole memory-bound forward, so this saves most of the time on trained students."""
    device = model.device
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
    cache, last = out.past_key_values, out.logits[0, -1].float()
    scores: list[float] = []
    if targets:
        ids = torch.zeros((len(targets), max(map(len, targets))), dtype=torch.long, device=device)
        for i, t in enumerate(targets):
            ids[i, :len(t)] = torch.tensor(t)
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(targets))
        logits = model(input_ids=ids, past_key_values=batch_cache, use_cache=True).logits.float()
        # position 0 (the prompt's last logits) predicts each target's first token, position j + 1 what follows token j
        logp = torch.cat([last.expand(len(targets), 1, -1), logits], 1).log_softmax(-1)
        scores = [float(logp[i, torch.arange(len(t), device=device), torch.tensor(t, device=device)].sum())
                  for i, t in enumerate(targets)]
        best = logp.argmax(-1).cpu()
        for i, t in enumerate(targets):
            if len(t) < max_new_tokens and best[i, :len(t)].tolist() == t and int(best[i, len(t)]) in eos:
                return list(t), scores
    tokens: list[int] = []
    nxt = int(last.argmax())
    while nxt not in eos and len(tokens) < max_new_tokens:
        tokens.append(nxt)
        if len(tokens) < max_new_tokens:  # no forward for a token that would not be kept
            logits = model(input_ids=torch.tensor([[nxt]], device=device), past_key_values=cache, use_cache=True).logits
            nxt = int(logits[0, -1].argmax())
    return tokens, scores


def answer_and_choice_scores(model: Any, tokenizer: Any, record: TaskRecord, bos: bool, max_new_tokens: int,
                             eos: set[int], fmt: str = DEFAULT_FORMAT) -> tuple[str, list[float]]:
    """The greedy answer after the `[answer]` prompt, and each choice's score in answer format FMT."""
    targets = [tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in choice_targets(record, fmt)]
    tokens, sums = greedy_and_scores(model, _ids(tokenizer, answer_prompt(record, fmt), bos), targets, eos,
                                     max_new_tokens)
    return tokenizer.decode(tokens, skip_special_tokens=True), [choice_score(s, len(t), fmt)
                                                                 for s, t in zip(sums, targets)]


def _device(model: Any, device: str | None) -> Any:
    if device is None and torch.cuda.is_available():
        device = "cuda"
    return model.to(device) if device is not None else model


@torch.no_grad()
def evaluate_task(model: Any, tokenizer: Any, records: Sequence[TaskRecord], max_new_tokens: int = 24,
                  progress: bool = False, answer_format: str | None = None, device: str | None = None
                  ) -> dict[str, Any]:
    """{"exact_match", "choice_accuracy" (multiple choice only), "n", "answer_format", "choice_score"} on
    RECORDS. ANSWER_FORMAT None: the format the model's checkpoint was trained in (formats.trained_format).
    DEVICE None: CUDA when available, else where the model is."""
    fmt = check_format(answer_format or trained_format(model))
    model = _device(model, device).eval()
    bos, eos = adds_bos(tokenizer), _eos_ids(model, tokenizer)
    exact = choice = 0
    mc = [r for r in records if r.choices]
    it = records
    if progress:
        from tqdm import tqdm

        it = tqdm(records, desc="eval", unit="q", dynamic_ncols=True)
    for r in it:
        text, scores = answer_and_choice_scores(model, tokenizer, r, bos, max_new_tokens, eos, fmt)
        exact += greedy_correct(r, text, fmt)
        if r.choices:
            choice += int(max(range(len(scores)), key=scores.__getitem__) == list(r.choices).index(r.answer))
    result: dict[str, Any] = {"n": len(records), "exact_match": exact / max(len(records), 1), "answer_format": fmt}
    if mc:
        result["choice_accuracy"] = choice / len(mc)
        result["choice_score"] = CHOICE_SCORE[fmt]
    return result
