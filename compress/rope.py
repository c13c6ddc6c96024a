"""Llama 3.1's RoPE scaling (rope_type "llama3") as llama.cpp stores it: one divisor per rotary
frequency, the `rope_freqs` tensor. `llama3_factors` writes it (the GGUF exporter); `llama3_parameters`
reads the scaling back out of it (loading a GGUF, whose metadata holds no rope_type), checked to
reproduce every stored factor."""
from __future__ import annotations

import math

import numpy as np

from compress.errors import SlimkitError

# Llama 3.1 / 3.2 ship low 1, high 4, original context 8192 (factor 8 or 32): tried first
_PRESET = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_RTOL = 1e-5


def _wavelengths(base: float, rotary_dim: int) -> np.ndarray:
    return 2 * math.pi * base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def llama3_factors(rope: dict, rotary_dim: int) -> np.ndarray:
    """Per-frequency divisors (float64, rotary_dim / 2): wavelengths shorter than original_context /
    high_freq_factor keep their frequency, longer than original_context / low_freq_factor are divided
    by `factor`, and those between interpolate (transformers' _compute_llama3_parameters)."""
    base = float(rope.get("rope_theta", 500_000.0))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    wavelen = _wavelengths(base, rotary_dim)
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid))


def _matches(rope: dict, factors: np.ndarray, rotary_dim: int) -> bool:
    return bool(np.allclose(llama3_factors(rope, rotary_dim), factors, rtol=_RTOL, atol=0))


def llama3_parameters(factors: np.ndarray, base: float, rotary_dim: int) -> dict | None:
    """The rope_parameters ({"rope_type": "llama3", ...}) whose factors are `factors`, or None when
    every factor is 1 (no scaling). Low, high and the original context enter only as original /
    wavelength, so the triple is not unique; the Llama 3.x values are preferred, else low = 1 and
    the other two solved from the interpolated frequencies (or the cut-offs when fewer than two are
    interpolated). Raises when no llama3 scaling reproduces them."""
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    if f.size != rotary_dim // 2:
        raise SlimkitError(f"rope_freqs has {f.size} factors for a rotary dimension of {rotary_dim}; "
                           "the GGUF is damaged: re-export it")
    factor = float(f.max())
    if np.allclose(f, 1.0, rtol=_RTOL, atol=0):
        return None
    wavelen = _wavelengths(base, rotary_dim)
    common = {"rope_type": "llama3", "factor": factor, "rope_theta": float(base)}
    candidates = [{**common, **_PRESET}]
    mid = (f > 1 + 1e-4) & (f < factor * (1 - 1e-4))
    smooth = (1 / f[mid] - 1 / factor) / (1 - 1 / factor)
    if mid.sum() >= 2:   # smooth = a / wavelen + b with low = 1: high - 1 = -1 / b, original = a * (high - 1)
        a, b = np.polyfit(1 / wavelen[mid], smooth, 1)
        if b < 0:
            candidates.append({**common, "low_freq_factor": 1.0, "high_freq_factor": 1 - 1 / b,
                               "original_max_position_embeddings": -a / b})
    else:   # low 1, high 4: the original context from the one interpolated point, or between the cut-offs
        if mid.sum() == 1:
            ctx = float(wavelen[mid][0] * (1 + 3 * smooth[0]))
        else:
            lo = 4 * float(wavelen[f <= 1 + 1e-4].max(initial=0.0))       # kept: wavelen < ctx / 4
            hi = float(wavelen[f >= factor * (1 - 1e-4)].min(initial=math.inf))  # divided: wavelen > ctx
            ctx = 2.0 ** round(math.log2(math.sqrt(lo * hi))) if math.isfinite(hi) and lo > 0 else max(lo, 1.0) * 2
            ctx = ctx if lo < ctx < hi else (lo + hi) / 2 if math.isfinite(hi) else ctx
        candidates.append({**common, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": ctx})
    for rope in candidates:
        if _matches(rope, f, rotary_dim):
            ctx = rope["original_max_position_embeddings"]
            rope["original_max_position_embeddings"] = int(round(ctx)) if abs(ctx - round(ctx)) < 1e-6 * ctx else ctx
            return rope
    raise SlimkitError("the GGUF's rope_freqs is not a Llama 3 RoPE scaling slimkit can read back; "
                       "load the model from its Hugging Face directory instead")
