"""Run an artifact in its own runtime and compare it with the torch model it came from.

GGUF: the same text is tokenized by the HF tokenizer and by llama.cpp (must be identical), then
the logits of a few hundred tokens are compared. Float types must match within a stated
tolerance; quantized types report top-1 agreement and mean KL(torch || llama.cpp).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import SlimkitError
from compress.evaluate import adds_bos, tokenize_plain, torch_logits_fn

# Max |logit difference| allowed, relative to max(1, max |torch logit|). Measured on the
# bundled models and tiny random ones: llama.cpp's F32 matmuls accumulate in another order
# (~1e-5 relative); F16/BF16 also round weights, and ggml's CPU F16 path rounds activations.
FLOAT_TOLERANCE = {"F32": 1e-3, "F16": 3e-2, "BF16": 1e-1}
MAX_TOKENS = 256

# Validation text: prose, numbers, code-ish punctuation and non-ASCII, written for this check.
VALIDATION_TEXT = (
    "The lighthouse keeper climbed the 132 steps every evening at 6:45 pm, carrying a lamp, a "
    "notebook and a thermos of tea. In 1897 the tower was rebuilt after a storm; the new lens, "
    "ground in Paris, weighed 2.5 tonnes and could be seen 23 nautical miles away.\n\n"
    "Q: What is 17 * 24?\nA: 17 * 24 = 408.\n\n"
    "def area(r: float) -> float:\n    return 3.14159 * r ** 2  # circle\n\n"
    "Café owners in Zürich said the naïve coöperative model «worked» — mostly. "
    "She wrote: \"Don't forget: the meeting's at 10:30, room B-12.\" Prices rose 4.7% year on year, "
    "and the committee's report (pp. 14-19) recommended three changes: (1) shorter shifts; "
    "(2) a second keeper; (3) electric light. The keeper's diary ends on 31 December 1903 with a "
    "single line: 'All quiet. Sea calm. Lamp lit at dusk.'\n"
)


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, in float64."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_logit": float(np.abs(ref).max()),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "mean_kl": float(_kl(ref, got).mean()),
    }


def validate_gguf(path: str | os.PathLike, ckpt, type_name: str, text: str | None = None,
                  max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """Tokenizer identity + logits parity of a GGUF against `ckpt`; raises SlimkitError on failure."""
    from export.runtime import LlamaRunner

    text = text or VALIDATION_TEXT
    hf_ids = tokenize_plain(ckpt.tokenizer, text)
    runner = LlamaRunner(Path(path), n_ctx=max_tokens + 1)
    try:
        ll_ids = runner.tokenize(text)
        if hf_ids != ll_ids:
            i = next((k for k, (a, b) in enumerate(zip(hf_ids, ll_ids)) if a != b), min(len(hf_ids), len(ll_ids)))
            raise SlimkitError(f"validation failed: llama.cpp tokenizes differently from the torch tokenizer "
                               f"at token {i} (torch {hf_ids[i:i + 3]}, llama.cpp {ll_ids[i:i + 3]})")
        tokens = hf_ids[: max_tokens - 1]
        if adds_bos(ckpt.tokenizer):
            tokens = [ckpt.tokenizer.bos_token_id] + tokens
        got = runner.logits(tokens)
    finally:
        runner.close()
    ref = torch_logits_fn(ckpt.model)(tokens)
    report: dict[str, Any] = {"type": type_name, "n_tokens": len(tokens), "tokenizer_identical": True,
                              **compare_logits(ref, got)}
    if not np.isfinite(got).all():
        raise SlimkitError(f"validation failed: llama.cpp produced non-finite logits for {path}")
    tol = FLOAT_TOLERANCE.get(type_name)
    if tol is not None:
        limit = tol * max(1.0, report["max_abs_logit"])
        report["tolerance"] = limit
        report["passed"] = report["max_abs_diff"] <= limit
        if not report["passed"]:
            raise SlimkitError(f"validation failed: {type_name} logits differ from torch by "
                               f"{report['max_abs_diff']:.4g} > {limit:.4g}; the export is wrong, please report it")
    else:
        report["passed"] = True  # quantized: agreement and KL are reported, not thresholded
    return report
