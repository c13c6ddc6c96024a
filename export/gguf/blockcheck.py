"""Every block of a GGUF against the weights it came from: a damaged block cannot pass.

The logit checks of export.validate see the model as a whole; one damaged block among a million
(a flipped scale, two rows swapped, bytes zeroed) moves the logits by less than quantization noise
and passes them. This check reads the file back with the gguf package (`gguf.quants.dequantize`,
gguf-py's port of ggml's dequantize_row_*), and for every tensor compares each quantization block
(the type's block: 32 values for Q8_0..Q5_1 and IQ4_NL, 256-value super-blocks for the K, IQ4_XS
and TQ types) with the float values the file was made from, in the file's layout
(export.gguf.arch's tensors(): permuted Q/K rows, Gemma's shifted norms):

    rel(block) = ||dequantized - expected|| / ||expected||

Rounding to a grid gives rel well under 1 for every type (measured worst blocks in
BLOCK_LIMIT's comment); a sign-flipped scale gives about 2, swapped rows about 1.4, a zeroed
block 1.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from compress.errors import SlimkitError

# Worst block of every tensor type over the correct files of benchmarks/results/validation.json
# (scripts/bench_validation.py: SmolLM2-135M and gemma3-270m, every --type, rtn and, for SmolLM2,
# llama.cpp's imatrix-weighted quantizer, whose blocks of unimportant columns err most; the tiny
# random models the tests export) times 1.5, rounded up, or 1.2 where 1.5x would reach 1 (IQ4_NL
# with an imatrix). Every limit but the ternary types' stays below 1, so a zeroed block, a flipped
# scale (~2) or swapped rows (~1.4) fails. TQ1_0 / TQ2_0 on weights that are not ternary err by 0.96
# of a block anyway: 1.2x that, which still stops a flipped scale and most swapped rows.
BLOCK_LIMIT = {
    "BF16": 0.0055,
    "F16": 0.00068,
    "F32": 1e-06,
    "IQ4_NL": 0.91,
    "IQ4_XS": 0.43,
    "Q2_K": 0.71,
    "Q3_K": 0.44,
    "Q4_0": 0.81,
    "Q4_1": 0.36,
    "Q4_K": 0.18,
    "Q5_0": 0.77,
    "Q5_1": 0.17,
    "Q5_K": 0.089,
    "Q6_K": 0.19,
    "Q8_0": 0.031,
    "TQ1_0": 1.2,
    "TQ2_0": 1.2,
}


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """(n_blocks, size) view of a tensor's rows; a row that is not a whole number of blocks
    (llama.cpp falls back to another type for those) is one block."""
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    if rows.shape[-1] % size:
        return rows
    return rows.reshape(-1, size)


def block_errors(expected: np.ndarray, stored: np.ndarray, block: int) -> np.ndarray:
    """rel per block (see the module docstring), float64."""
    w = _blocks(expected.astype(np.float64), block)
    d = _blocks(stored.astype(np.float64), block)
    norm = np.linalg.norm(w, axis=1)
    err = np.linalg.norm(d - w, axis=1)
    tiny = 1e-12 * max(float(np.sqrt((w * w).mean())), 1e-30) * np.sqrt(w.shape[1])
    return np.where(norm > tiny, err / np.maximum(norm, tiny), np.where(err > tiny, np.inf, 0.0))


def _expected(ckpt) -> dict[str, np.ndarray]:
    from export.gguf import arch as arch_registry

    spec = arch_registry.get(ckpt.model.config)
    return {name: t.numpy() for _, name, t in spec.tensors(ckpt.model.state_dict())}


def check_blocks(path: str | os.PathLike, ckpt, limits: dict[str, float] | None = BLOCK_LIMIT) -> dict[str, Any]:
    """Compare every tensor of the GGUF at `path` with `ckpt`'s weights block by block; returns
    {type: {"tensors", "blocks", "max_rel", "worst", "limit"}}; raises SlimkitError naming the
    first tensor and block over its type's limit, or a tensor that is missing, extra or misshapen.
    limits None: measure only (no limit applied)."""
    import gguf

    expected = _expected(ckpt)
    reader = gguf.GGUFReader(path)
    seen: set[str] = set()
    report: dict[str, dict[str, Any]] = {}
    for t in reader.tensors:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        if t.name not in expected:
            raise SlimkitError(f"validation failed: {path} holds a tensor {t.name!r} the model does not have")
        want = expected[t.name]
        got = gguf.quants.dequantize(t.data, qtype)
        if tuple(got.shape) != tuple(want.shape) and got.size == want.size and want.ndim <= 1:
            got = got.reshape(want.shape)
        if tuple(got.shape) != tuple(want.shape):
            raise SlimkitError(f"validation failed: {t.name} in {path} has shape {tuple(got.shape)}, the model's is "
                               f"{tuple(want.shape)}")
        seen.add(t.name)
        size = gguf.GGML_QUANT_SIZES[qtype][0]
        rel = block_errors(want, got, 32 if size == 1 else size)
        limit = None if limits is None else limits.get(qtype.name)
        if limits is not None and limit is None:
            raise SlimkitError(f"validation failed: {t.name} in {path} is {qtype.name}, a type slimkit cannot check")
        i = int(np.argmax(rel)) if rel.size else 0
        worst = float(rel[i]) if rel.size else 0.0
        entry = report.setdefault(qtype.name, {"tensors": 0, "blocks": 0, "max_rel": 0.0, "worst": None,
                                               "limit": limit})
        entry["tensors"] += 1
        entry["blocks"] += int(rel.size)
        if worst > entry["max_rel"] or entry["worst"] is None:
            entry["max_rel"], entry["worst"] = worst, f"{t.name} block {i}"
        if limit is not None and not worst <= limit:
            raise SlimkitError(f"validation failed: block {i} of {t.name} ({qtype.name}) in {path} differs from the "
                               f"model's weights by {worst:.3g} of its norm (limit {limit:g}): the file is damaged; "
                               "export it again")
    missing = sorted(set(expected) - seen)
    if missing:
        raise SlimkitError(f"validation failed: {path} lacks {len(missing)} tensor(s) of the model, e.g. {missing[0]}")
    return report
