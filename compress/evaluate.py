"""Perplexity with one protocol for every runtime (torch here; llama.cpp in export.runtime).

Protocol: the text is tokenized once without special tokens; the token stream is cut into
non-overlapping windows of `ctx` tokens; if the model's tokenizer adds BOS, the first token of
each window is replaced by BOS (as llama.cpp's perplexity tool does); every token after the
first of a window is scored: ctx - 1 predictions per window. Same tokens in -> numbers that are
comparable across torch, GGUF and ONNX.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from compress.errors import SlimkitError

LogitsFn = Callable[[Sequence[int]], np.ndarray]  # tokens -> (len, vocab) float32 logits


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    nll: float  # mean negative log-likelihood (nats/token)
    tokens_scored: int
    windows: int
    ctx: int

    def to_dict(self) -> dict:
        return asdict(self)


def safe_exp(x: float) -> float:
    """exp(x), or inf past float range (a broken model's perplexity is infinite, not an error)."""
    return math.exp(x) if x < 709.0 else float("inf")


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, gzip-compressed or not."""
    path = Path(path)
    if not path.is_file():
        raise SlimkitError(f"{path}: no such text file")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise SlimkitError(f"{path} is a corrupt gzip file ({exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SlimkitError(f"{path} is not UTF-8 text ({exc})") from None


def make_windows(tokens: Sequence[int], ctx: int, max_chunks: int | None = None,
                 bos_id: int | None = None) -> list[list[int]]:
    if ctx < 2:
        raise SlimkitError(f"--ctx must be at least 2, got {ctx}")
    n = len(tokens) // ctx
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n == 0:
        raise SlimkitError(f"the text has {len(tokens)} tokens, fewer than one window of {ctx}; "
                           "give a longer text or a smaller --ctx")
    out = []
    for i in range(n):
        w = list(tokens[i * ctx:(i + 1) * ctx])
        if bos_id is not None:
            w[0] = bos_id
        out.append(w)
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity(logits_fn: LogitsFn, windows: list[list[int]], progress: bool = False) -> Perplexity:
    total, count = 0.0, 0
    iterator = windows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(windows, desc="perplexity", unit="window")
    for w in iterator:
        logp = log_softmax(logits_fn(w)[:-1])  # position t predicts token t+1
        total -= float(logp[np.arange(len(w) - 1), np.asarray(w[1:])].sum())
        count += len(w) - 1
    nll = total / count
    return Perplexity(safe_exp(nll), nll, count, len(windows), len(windows[0]))


def torch_logits_fn(model) -> LogitsFn:
    import torch

    def fn(tokens: Sequence[int]) -> np.ndarray:
        with torch.inference_mode():
            ids = torch.tensor([list(tokens)], dtype=torch.long)
            return model(input_ids=ids).logits[0].float().numpy()

    return fn


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a plain encode() (add_bos_token)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def torch_perplexity(model, tokenizer, text: str, ctx: int = 512, max_chunks: int | None = None,
                     progress: bool = False) -> Perplexity:
    tokens = tokenize_plain(tokenizer, text)
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    return perplexity(torch_logits_fn(model), make_windows(tokens, ctx, max_chunks, bos), progress)


def tokenize_plain(tokenizer, text: str) -> list[int]:
    """Token ids of raw text: no BOS/EOS, special-token strings in the text kept as text
    (llama.cpp's tokenize(..., special=False))."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
