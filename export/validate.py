"""Run an artifact in its own runtime and compare it with the torch model it came from.

GGUF, three checks, each able to fail (tests/export/test_validation_gates.py damages files):
1. the file holds the model: every quantization block of every tensor against the model's
   weights (export.gguf.blockcheck);
2. llama.cpp tokenizes the validation text exactly like the torch tokenizer;
3. llama.cpp computes what the file holds: its logits on that text against torch running the
   file's own values with ggml's activation rounding (export.gguf.reference), gated per --type
   by GATES (max |logit difference| relative to max(1, max |logit|), mean KL, top-1 agreement).
The quality cost of the type, top-1 agreement and mean KL(torch fp32 || llama.cpp) against the
float model, is reported, not gated: it depends on the model (a tiny random llama loses top-1
0.41 at Q4_K_M where SmolLM2 loses 0.17), while checks 1 and 3 do not.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import SlimkitError
from compress.evaluate import adds_bos, log_softmax, tokenize_plain, torch_logits_fn
from export.gguf.blockcheck import BLOCK_LIMIT

MAX_TOKENS = 256
GATE_MARGIN = 1.5
# Per --type: llama.cpp against torch on the file's values (check 3). Set from the worst correct
# file in benchmarks/results/validation.json (scripts/bench_validation.py: SmolLM2-135M and
# gemma3-270m at every type, SmolLM2 also through llama.cpp's imatrix quantizer, and the tiny random
# models the tests export; 255 tokens; llama.cpp with an F32 KV cache) with GATE_MARGIN:
# max_rel_diff and max_kl times it, min_top1 = 1 - (1 - worst) * it (at most 0.99), rounded up.
# What is left on a correct file is summation order: in SmolLM2's 30 layers an activation rounded to
# the neighbouring Q8 level grows to a few logits (Q5_1: 0.11 of max |logit|, top-1 0.93). TQ1_0 /
# TQ2_0 of SmolLM2 and gemma3 (not ternary models: float top-1 0.04) differ far more (KL 1.3 / 2.7)
# although SmolLM2's ternary values at F32 match llama.cpp to 6e-5 and the tiny models' TQ files to
# KL 3e-4: their logit gates stop little (see issue 20's closing note); the block check still holds
# every TQ file to its model.
# An export bug (a wrong permutation, a shifted norm, a misread type) gives O(1) differences.
GATES: dict[str, dict[str, float]] = {
    "F32": {"max_rel_diff": 0.0014, "max_kl": 1e-05, "min_top1": 0.99},
    "F16": {"max_rel_diff": 0.0024, "max_kl": 1e-05, "min_top1": 0.99},
    "BF16": {"max_rel_diff": 0.016, "max_kl": 0.00019, "min_top1": 0.982},
    "Q8_0": {"max_rel_diff": 0.08, "max_kl": 0.0053, "min_top1": 0.947},
    "Q4_0": {"max_rel_diff": 0.083, "max_kl": 0.0062, "min_top1": 0.894},
    "Q4_1": {"max_rel_diff": 0.092, "max_kl": 0.006, "min_top1": 0.905},
    "Q5_0": {"max_rel_diff": 0.083, "max_kl": 0.0064, "min_top1": 0.929},
    "Q5_1": {"max_rel_diff": 0.18, "max_kl": 0.0094, "min_top1": 0.888},
    "Q2_K": {"max_rel_diff": 0.13, "max_kl": 0.015, "min_top1": 0.882},
    "Q2_K_S": {"max_rel_diff": 0.076, "max_kl": 0.0086, "min_top1": 0.947},
    "Q3_K_S": {"max_rel_diff": 0.24, "max_kl": 0.015, "min_top1": 0.877},
    "Q3_K_M": {"max_rel_diff": 0.24, "max_kl": 0.013, "min_top1": 0.87},
    "Q3_K_L": {"max_rel_diff": 0.17, "max_kl": 0.012, "min_top1": 0.917},
    "Q4_K_S": {"max_rel_diff": 0.13, "max_kl": 0.0098, "min_top1": 0.929},
    "Q4_K_M": {"max_rel_diff": 0.12, "max_kl": 0.0093, "min_top1": 0.929},
    "Q5_K_S": {"max_rel_diff": 0.11, "max_kl": 0.011, "min_top1": 0.905},
    "Q5_K_M": {"max_rel_diff": 0.12, "max_kl": 0.013, "min_top1": 0.899},
    "Q6_K": {"max_rel_diff": 0.18, "max_kl": 0.0096, "min_top1": 0.917},
    "IQ4_NL": {"max_rel_diff": 0.072, "max_kl": 0.006, "min_top1": 0.888},
    "IQ4_XS": {"max_rel_diff": 0.23, "max_kl": 0.011, "min_top1": 0.888},
    "TQ1_0": {"max_rel_diff": 1.4, "max_kl": 4.1, "min_top1": 0.0},
    "TQ2_0": {"max_rel_diff": 1.4, "max_kl": 4.1, "min_top1": 0.0},
}
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
                  max_tokens: int = MAX_TOKENS, weights_as_stored: bool = False,
                  gates: bool = True) -> dict[str, Any]:
    """The three checks of the module docstring; raises SlimkitError on the first failure.

    weights_as_stored is accepted for callers that know the file holds ckpt's weights exactly (a
    QAT checkpoint's blocks); the reference is always the file's values, so it changes nothing.
    gates: False measures without judging (scripts/bench_validation.py sets the gates from it).
    """
    from export.gguf.blockcheck import check_blocks
    from export.gguf.reference import file_reference
    from export.runtime import LlamaRunner

    blocks = check_blocks(path, ckpt, limits=BLOCK_LIMIT if gates else None)
    text = text or VALIDATION_TEXT
    hf_ids = tokenize_plain(ckpt.tokenizer, text)
    runner = LlamaRunner(Path(path), n_ctx=max_tokens + 1, kv_f32=True)
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
    if not np.isfinite(got).all():
        raise SlimkitError(f"validation failed: llama.cpp produced non-finite logits for {path}")
    ref = torch_logits_fn(ckpt.model)(tokens)
    report: dict[str, Any] = {"type": type_name, "n_tokens": len(tokens), "tokenizer_identical": True,
                              **compare_logits(ref, got), "blocks": blocks}
    stored = report["stored"] = compare_logits(torch_logits_fn(file_reference(path, ckpt))(tokens), got)
    stored["max_rel_diff"] = stored["max_abs_diff"] / max(1.0, stored["max_abs_logit"])
    gate = report["gate"] = GATES.get(type_name)
    if gate is None:
        if not gates:
            return report
        raise SlimkitError(f"validation has no gate for --type {type_name}; please report it")
    report["tolerance"] = gate["max_rel_diff"] * max(1.0, stored["max_abs_logit"])
    failed = [f"{what} {stored[key]:.4g} {op} {gate[g]:g}" for what, key, g, op, bad in (
        ("max relative |dlogit|", "max_rel_diff", "max_rel_diff", ">", stored["max_rel_diff"] > gate["max_rel_diff"]),
        ("mean KL", "mean_kl", "max_kl", ">", stored["mean_kl"] > gate["max_kl"]),
        ("top-1 agreement", "top1_agreement", "min_top1", "<", stored["top1_agreement"] < gate["min_top1"]))
        if bad]
    report["passed"] = not failed
    if gates and failed:
        raise SlimkitError(f"validation failed: llama.cpp's {type_name} logits differ from torch running the file's "
                           f"own values ({'; '.join(failed)}); the export is wrong, please report it")
    return report
