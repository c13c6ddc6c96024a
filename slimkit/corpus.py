"""`slimkit corpus TEACHER -o corpus.txt --tokens N`: a training corpus written by the teacher.

llama.cpp samples documents from the teacher's GGUF (a zoo model's shipped file, a .gguf, or a HF
directory exported once to F16 into the cache): each document starts from BOS (or from the next
line of --prompts), is sampled from the teacher's own distribution (temperature 1, no top-k /
top-p truncation unless asked) with its own seed (base seed + document number), and is kept only
when it is new (sha256 of its whitespace-normalised text) and at least --min-tokens long. The
result is plain text, documents separated by blank lines, usable as `--data`.

Speed: --sequences documents (32) are decoded together in one llama.cpp context, one llama_decode a
step for all of them (export.runtime.BatchedGenerator); sampling is numpy's, one generator per
document seeded with its number, so the corpus does not depend on which document shared a batch
with which, except through llama.cpp's float rounding, which is not batch-invariant: the same
command reproduces the same corpus, while another --sequences may differ in some documents.
Documents are committed in document order whatever order they finish in.

Resumable: documents are appended to OUT.partial with OUT.partial.json (documents written, tokens,
next document number, the digests seen) updated after each one; a restarted command continues
from there with the same settings (others are refused) and renames OUT.partial to OUT when done.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from compress.errors import SlimkitError

PROMPT_LIMIT = 256                   # tokens of a --prompts line (with BOS)
SAMPLER = "numpy-batched-v1"        # in the resume key: a partial corpus from another sampler is refused


@dataclass(frozen=True)
class CorpusConfig:
    tokens: int                      # corpus size in teacher tokens (completion tokens, duplicates excluded)
    max_tokens: int = 256            # per document
    min_tokens: int = 32             # shorter documents (an early end of text) are dropped
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                   # 0: the whole vocabulary
    seed: int = 0
    prompts: str | None = None       # a text file, one prompt per line, cycled; None: unconditional from BOS
    threads: int | None = None
    sequences: int = 32              # sampled together in one llama.cpp context (batched decoding)

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.max_tokens < 1 or not 0 <= self.min_tokens <= self.max_tokens:
            raise SlimkitError("--tokens and --max-tokens must be >= 1 and 0 <= --min-tokens <= --max-tokens")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise SlimkitError("--temperature must be > 0, --top-p in (0, 1] and --top-k >= 0")
        if self.sequences < 1:
            raise SlimkitError("--sequences must be >= 1")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise SlimkitError(f"{self.prompts}: no such prompts file")

    def resume_key(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k not in ("tokens", "threads", "sequences")},
                "sampler": SAMPLER}


def teacher_gguf(source: str) -> Path:
    """A GGUF llama.cpp samples `source` from: a .gguf file itself; a zoo model or a HF directory is
    exported once to F16 into slimkit's cache. F16, not a zoo model's shipped file, because (1) it is
    the teacher distillation learns from (the torch model of the shipped file's dequantized values,
    to F16 rounding, not llama.cpp's quantized-activation arithmetic) and (2) batched decoding is
    ~2x faster from F16 than from the shipped Q4_1 here (SmolLM2-135M, 2 cores, 32 sequences:
    196 against ~100 tokens/s)."""
    from compress import zoo
    from compress.checkpoint import file_sha256, tree_sha256

    path = Path(source)
    if path.is_file():
        return path
    key = tree_sha256(path) if path.exists() else f"{source}-{file_sha256(zoo.get(source).path())}"
    out = zoo.cache_dir() / "corpus-teachers" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.gguf"
    if not out.is_file():
        from compress.checkpoint import load
        from export.gguf.writer import export_gguf

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.gguf")
        export_gguf(load(source), tmp, "F16", validate=False)
        os.replace(tmp, out)
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def write_corpus(source: str, out: str | os.PathLike, cfg: CorpusConfig, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample the corpus into OUT (resuming OUT.partial); returns its summary."""
    from export.runtime import BatchedGenerator, LlamaRunner

    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    state_path = out.with_name(out.name + ".partial.json")
    key = {"source": str(source), **cfg.resume_key()}
    state: dict[str, Any] = {"key": key, "documents": 0, "tokens": 0, "next": 0, "dropped_duplicates": 0,
                             "dropped_short": 0, "seconds": 0.0, "digests": []}
    if state_path.is_file() and partial.is_file():
        saved = json.loads(state_path.read_text())
        if saved.get("key") != key:
            changed = sorted(k for k in key if saved.get("key", {}).get(k) != key[k])
            raise SlimkitError(f"{partial} was sampled with other settings ({', '.join(changed)}); "
                               f"delete it and {state_path.name} to start over")
        state = saved
        with open(partial, "r+b") as f:   # drop a document appended after the last state update
            f.truncate(state["bytes"])
    elif partial.exists():
        partial.unlink()
    prompts = [p for p in Path(cfg.prompts).read_text().splitlines() if p.strip()] if cfg.prompts else [""]
    runner = LlamaRunner(teacher_gguf(source), n_ctx=64, threads=cfg.threads)
    gen = None
    seen = set(state["digests"])
    bos, eos = runner.llm.token_bos(), runner.llm.token_eos()   # a document starts at BOS (EOS when there is none)
    encoded = [([bos] if bos >= 0 else []) + runner.tokenize(p) for p in prompts]
    encoded = [ids or [eos] for ids in encoded]
    too_long = [i for i, ids in enumerate(encoded) if len(ids) > PROMPT_LIMIT]
    if too_long:
        runner.close()
        raise SlimkitError(f"{cfg.prompts}: line {too_long[0] + 1} has {len(encoded[too_long[0]])} tokens; "
                           f"prompts are limited to {PROMPT_LIMIT}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.tokens, initial=min(state["tokens"], cfg.tokens), unit="tok", desc="corpus")
    start = time.perf_counter() - state["seconds"]

    def jobs() -> Iterator[tuple[int, list[int], np.random.Generator]]:
        n = state["next"]
        while True:
            yield n, encoded[n % len(prompts)], np.random.default_rng(cfg.seed * 1_000_003 + n)
            n += 1

    done: dict[int, list[int]] = {}   # finished out of order, waiting for the documents before them
    try:
        gen = BatchedGenerator(runner, slots=cfg.sequences, max_len=cfg.max_tokens + PROMPT_LIMIT,
                               threads=cfg.threads)
        for n, ids in gen.generate(jobs(), cfg.max_tokens, cfg.temperature, cfg.top_k, cfg.top_p):
            done[n] = ids
            while state["next"] in done and state["tokens"] < cfg.tokens:   # commit in document order
                n = state["next"]
                ids = done.pop(n)
                prompt = prompts[n % len(prompts)]
                text = (prompt + runner.llm.detokenize(ids).decode("utf-8", errors="ignore")).strip()
                # a blank line is the document separator (\r counted as a line end, as text readers do)
                text = re.sub(r"\n\s*\n", "\n", re.sub(r"\r\n?", "\n", text))
                state["next"] = n + 1
                digest = _digest(text)
                if len(ids) < cfg.min_tokens or not text:
                    state["dropped_short"] += 1
                elif digest in seen:
                    state["dropped_duplicates"] += 1
                else:
                    seen.add(digest)
                    with open(partial, "ab") as f:
                        f.write(text.encode() + b"\n\n")
                        f.flush()
                        os.fsync(f.fileno())
                    state["documents"] += 1
                    state["tokens"] += len(ids)
                    state["digests"].append(digest)
                    if bar is not None:
                        bar.update(len(ids))
                state["bytes"] = partial.stat().st_size if partial.exists() else 0
                state["seconds"] = round(time.perf_counter() - start, 2)
                tmp = state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, state_path)
                if state["next"] > 20 * max(1, state["documents"]) + 100:
                    raise SlimkitError(f"the teacher keeps repeating itself or stopping early ({state['next']} "
                                       f"samples, {state['documents']} kept): lower --min-tokens or give --prompts")
            if state["tokens"] >= cfg.tokens:
                break
    finally:
        if bar is not None:
            bar.close()
        if gen is not None:
            gen.close()
        runner.close()
    os.replace(partial, out)
    state_path.unlink()
    summary = {k: state[k] for k in ("documents", "tokens", "dropped_duplicates", "dropped_short", "seconds")}
    summary["tokens_per_s"] = round(state["tokens"] / max(state["seconds"], 1e-9), 1)
    log(f"wrote {out}: {summary['documents']} documents, {summary['tokens']} teacher tokens "
        f"({summary['dropped_duplicates']} duplicates and {summary['dropped_short']} short samples dropped), "
        f"{summary['tokens_per_s']} tok/s")
    return summary
