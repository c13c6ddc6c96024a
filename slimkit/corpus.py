"""`slimkit corpus TEACHER -o corpus.txt --tokens N`: a training corpus written by the teacher.

llama.cpp samples documents from the teacher's GGUF (a zoo model's shipped file, a .gguf, or a HF
directory exported once to F16 into the cache): each document starts from BOS (or from the next
line of --prompts), is sampled from the teacher's own distribution (temperature 1, no top-k /
top-p truncation unless asked) with its own seed (base seed + document number), and is kept only
when it is new (sha256 of its whitespace-normalised text) and at least --min-tokens long. The
result is plain text, documents separated by blank lines, usable as `--data`.

Resumable: documents are appended to OUT.partial with OUT.partial.json (documents written, tokens,
next document number, the digests seen) updated after each one; a restarted command continues
from there with the same settings (others are refused) and renames OUT.partial to OUT when done.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from compress.errors import SlimkitError


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

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.max_tokens < 1 or not 0 <= self.min_tokens <= self.max_tokens:
            raise SlimkitError("--tokens and --max-tokens must be >= 1 and 0 <= --min-tokens <= --max-tokens")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise SlimkitError("--temperature must be > 0, --top-p in (0, 1] and --top-k >= 0")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise SlimkitError(f"{self.prompts}: no such prompts file")

    def resume_key(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("tokens", "threads")}


def teacher_gguf(source: str) -> Path:
    """A GGUF llama.cpp can run for `source`: the file itself, a zoo model's file, or a HF
    directory exported once (F16) into slimkit's cache."""
    from compress import zoo
    from compress.checkpoint import tree_sha256

    path = Path(source)
    if path.is_file():
        return path
    if not path.exists():
        return zoo.get(source).path()
    out = zoo.cache_dir() / "corpus-teachers" / f"{tree_sha256(path)[:32]}.gguf"
    if not out.is_file():
        from compress.checkpoint import load
        from export.gguf.writer import export_gguf

        out.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(load(path), out, "F16", validate=False)
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def write_corpus(source: str, out: str | os.PathLike, cfg: CorpusConfig, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sample the corpus into OUT (resuming OUT.partial); returns its summary."""
    from export.runtime import LlamaRunner, quiet_stderr

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
    runner = LlamaRunner(teacher_gguf(source), n_ctx=cfg.max_tokens + 256, threads=cfg.threads)
    seen = set(state["digests"])
    bos, eos = runner.llm.token_bos(), runner.llm.token_eos()   # a document starts at BOS (EOS when there is none)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.tokens, initial=min(state["tokens"], cfg.tokens), unit="tok", desc="corpus")
    start = time.perf_counter() - state["seconds"]
    try:
        while state["tokens"] < cfg.tokens:
            n = state["next"]
            prompt = prompts[n % len(prompts)]
            start_ids = [bos] + runner.tokenize(prompt) if bos >= 0 else runner.tokenize(prompt) or [eos]
            with quiet_stderr():
                res = runner.llm.create_completion(start_ids, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                                                   top_p=cfg.top_p, top_k=cfg.top_k, min_p=0.0, repeat_penalty=1.0,
                                                   seed=cfg.seed * 1_000_003 + n)
            runner.llm.reset()
            text = (prompt + res["choices"][0]["text"]).strip()
            used = int(res["usage"]["completion_tokens"])
            state["next"] = n + 1
            digest = _digest(text)
            if used < cfg.min_tokens or not text:
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
                state["tokens"] += used
                state["digests"].append(digest)
                if bar is not None:
                    bar.update(used)
            state["bytes"] = partial.stat().st_size if partial.exists() else 0
            state["seconds"] = round(time.perf_counter() - start, 2)
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, state_path)
            if state["next"] > 20 * max(1, state["documents"]) + 100:
                raise SlimkitError(f"the teacher keeps repeating itself or stopping early ({state['next']} samples, "
                                   f"{state['documents']} kept): lower --min-tokens or give --prompts")
    finally:
        if bar is not None:
            bar.close()
        runner.close()
    os.replace(partial, out)
    state_path.unlink()
    summary = {k: state[k] for k in ("documents", "tokens", "dropped_duplicates", "dropped_short", "seconds")}
    summary["tokens_per_s"] = round(state["tokens"] / max(state["seconds"], 1e-9), 1)
    log(f"wrote {out}: {summary['documents']} documents, {summary['tokens']} teacher tokens "
        f"({summary['dropped_duplicates']} duplicates and {summary['dropped_short']} short samples dropped), "
        f"{summary['tokens_per_s']} tok/s")
    return summary
