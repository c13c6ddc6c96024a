"""ggml's importance-weighted GGUF quantizers in torch, byte for byte (the `quant_weights != NULL` paths).

`llama-quantize --imatrix` calls ggml_quantize_chunk with the imatrix of each tensor: one value per
column, the mean squared input activation. With it ggml does not run quantize_row_*_ref but
quantize_row_*_impl (ggml/src/ggml-quants.c), which fits each block's scale (and min) to minimise an
importance-weighted squared error:

  Q4_0, Q5_0  make_qx_quants(32, 8 | 16, x, L, 1, w),        w = qw * sqrtf(sigma2 + x*x)
  Q4_1, Q5_1  make_qkx3_quants(32, 15 | 31, ..., -0.9f, 0.05f, 36),  same w
  Q4_K        make_qkx3_quants per 32-weight sub-block with w = qw * sqrtf(sigma2 + x*x), then the
              8 sub-scales and mins are themselves quantized to 6 bits by make_qp_quants
  Q6_K        make_qx_quants(16, 32, x, L, 1, qw) per 16-weight sub-block
  Q8_0        quantize_q8_0 ignores quant_weights: weighted == reference

sigma2 is sum(x*x) / n_per_row over the whole row for the legacy types (row_sigma2), and
2 * sum(x*x) / 256 over each super-block for Q4_K (computed here from the group itself).

The work is split for GPTQ-style error feedback, which needs ggml's scales but its own codes:
  choose(x, qtype, importance, sigma2) -> Group   ggml's scales, mins and codes for one group of columns
  pack(group, q) -> bytes                         the block bytes with the group's scales and codes q
quantize() = pack(choose(...), group.q) on whole rows, which is what the byte-identity tests check.
For every type, `group.scale * q + group.offset` (two float32 operations, no fused multiply-add) gives
the same float32 values as llama.cpp's dequantize_row_* of the packed block (zeros up to their sign):
the products are exact because fp16 d times a small integer fits in float32's 24-bit mantissa.

Exactness rules are those of compress/quant/kquants.py, whose helpers this module reuses.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from compress.quant import formats
from compress.quant.kquants import (GROUP_MAX_EPS, QK_K, _div, _f32, _fp16, _make_qkx2_quants,
                                    _make_qx_quants_rmse1, _nearest_int, _pack_scales_k4, _q4_k_pack,
                                    _q4_k_parts, _q4_k_requantize, _q6_k_pack, _q6_k_parts, _q6_k_super,
                                    _seq_sum, _sqrtf, _unpack_scales_k4)

LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
K_QUANTS = ("Q4_K", "Q6_K")
TYPES = LEGACY + K_QUANTS
USES_SIGMA2 = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")  # the *_impl functions that compute sigma2 over the row
# weights per sub-block; codes as stored (ggml's own quantizers never write -128 into Q8_0, formats.py)
SUB = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q4_K": 32, "Q6_K": 16}
CODE_RANGE = {**{t: (formats.layout(t).code_min, formats.layout(t).code_max) for t in LEGACY},
              "Q4_K": (0, 15), "Q6_K": (0, 63)}
_CHUNK = 1 << 20  # weights per pass: large enough to amortise the ~150 small torch calls per search step


class Group(NamedTuple):
    """The blocks of one group of columns for all rows: one block of the type along each row
    (32 weights for the legacy types, one 256-weight super-block for Q4_K / Q6_K), or several.

    scale, offset (rows, n_sub): dequantized value = scale * q + offset per sub-block, exactly as
    llama.cpp dequantizes (fp16 d for legacy types, fp16 d * integer sub-scale for K-quants;
    offset -8d / -16d for Q4_0 / Q5_0, 0 for Q8_0, fp16 m for Q4_1 / Q5_1, -(dmin * m) for Q4_K,
    -32 * d * sc for Q6_K). q (rows, G): the codes ggml chose, as stored. state: what pack needs
    besides the codes: (d, m or None) for legacy types (rows, n_blocks); (d, dmin, the 12 scale
    bytes (rows, n_super, 12)) for Q4_K; (d, int8 scales (rows, n_super, 16)) for Q6_K.
    """

    qtype: str
    scale: torch.Tensor  # (rows, n_sub) float32
    offset: torch.Tensor  # (rows, n_sub) float32
    q: torch.Tensor  # (rows, G) float32 integer codes, as stored (0..15 for Q4_0, -127..127 for Q8_0)
    qmin: int  # the smallest / largest code a stored block may hold (formats.LAYOUTS for legacy types)
    qmax: int
    sub: int  # weights per sub-block: 32, or 16 for Q6_K
    state: tuple


def row_sigma2(x: torch.Tensor) -> torch.Tensor:
    """(rows,) float32: sum_x2 / n_per_row per row, as quantize_row_q4_0_impl (and q4_1, q5_0, q5_1)
    compute it before the block loop: `for (j...) sum_x2 += x[j]*x[j]; sigma2 = sum_x2/n_per_row;`."""
    x = x.detach().to(torch.float32).reshape(-1, x.shape[-1])
    cols = x.T.contiguous()  # (n_per_row, rows)
    total = _seq_sum(cols * cols)
    return _div(total, torch.full_like(total, float(x.shape[1])))


# ---- legacy types (quantize_row_q{4,5}_{0,1}_impl) ----------------------------------------

def _legacy_weighted(x: torch.Tensor, qtype: str, imp: torch.Tensor, sigma2: torch.Tensor) -> tuple:
    """x (rows, G), imp (G,), sigma2 (rows,) -> (d, m or None (rows, nb), codes (rows, G))."""
    rows, nb = x.shape[0], x.shape[1] // 32
    xt = x.reshape(rows * nb, 32).T.contiguous()  # (32 elements, rows*nb blocks)
    qw = imp.reshape(nb, 32).T.repeat(1, rows)  # block r*nb + j holds imp[32j : 32j+32]
    # weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j])
    weight = qw * _sqrtf(sigma2.repeat_interleave(nb)[None, :] + xt * xt)
    m = None
    if qtype in ("Q4_0", "Q5_0"):
        # quantize_row_q4_0_impl / q5_0: d = make_qx_quants(32, 8 | 16, xb, L, 1, weight)
        L, d = _make_qx_quants_rmse1(xt, 8 if qtype == "Q4_0" else 16, weight)
    else:
        # quantize_row_q4_1_impl / q5_1: make_qkx3_quants(32, 15 | 31, ..., -0.9f, 0.05f, 36, false);
        # with weights it is make_qkx2_quants' algorithm (`max <= min` vs `max == min` aside)
        L, d, the_min = _make_qkx2_quants(xt, weight, 15 if qtype == "Q4_1" else 31, -0.9, 0.05, 36)
        m = _fp16(-the_min).reshape(rows, nb)  # y[ib].m = GGML_FP32_TO_FP16(-min)
    return _fp16(d).reshape(rows, nb), m, L.T.reshape(rows, nb * 32)


def _legacy(x: torch.Tensor, qtype: str, imp: torch.Tensor | None, sigma2: torch.Tensor | None) -> tuple:
    """(scale, offset, q, state) for the rows x (rows, G) of a legacy type."""
    rows, nb = x.shape[0], x.shape[1] // 32
    if imp is None or qtype == "Q8_0":  # quantize_q8_0: `(void)quant_weights; // not used`
        c = formats.codes(x, qtype)  # quantize_row_*_ref
        d = _fp16(c.d).reshape(rows, nb)
        m = None if c.m is None else _fp16(c.m).reshape(rows, nb)
        q = c.q.reshape(rows, nb * 32)
    else:
        d, m, q = _legacy_weighted(x, qtype, imp, sigma2)
    lay = formats.layout(qtype)
    # dequantize_row_q4_0: (q - 8) * d == d * q + (-8 * d) exactly; q4_1: d * q + m; q8_0: d * q
    offset = m if lay.affine else -lay.offset * d if lay.offset else torch.zeros_like(d)
    return d, offset, q, (d, m)


# ---- Q4_K (quantize_row_q4_K_impl) ---------------------------------------------------------

def _make_qp_quants(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qp_quants(n, nmax, x, L, quant_weights) on x, w (n, B): (uint8 codes L (n, B) int32, scale (B,)).

    L is uint8 in C: a negative code (only from a negative sub-scale) wraps, and the refinement
    reads the wrapped value back; that is reproduced (`& 0xFF`).
    """
    mx = x.amax(0).clamp_min(0)  # float max = 0; max = MAX(max, x[i]);
    empty = mx < GROUP_MAX_EPS  # all zero: L = 0, return 0
    mx = torch.where(empty, torch.ones_like(mx), mx)
    iscale = _div(float(nmax), mx)
    scale = _div(1.0, iscale)
    diff = x - scale * (_nearest_int(iscale * x) & 0xFF).to(torch.float32)  # L[i] = nearest_int(iscale*x[i])
    best = _seq_sum(w * diff * diff)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        c = _f32(np.float32(0.1) * np.float32(step) + np.float32(nmax))  # (0.1f*is + nmax)
        iscale_is = _div(c, mx)
        l = _nearest_int(iscale_is * x).clamp(max=nmax).to(torch.float32)  # l = MIN(nmax, l)
        diff = x - _div(1.0, iscale_is) * l
        mse = _seq_sum(w * diff * diff)
        better = mse < best
        best = torch.where(better, mse, best)
        iscale = torch.where(better, iscale_is, iscale)
    l = _nearest_int(iscale * x).clamp(max=nmax)
    lf = l.to(torch.float32)
    sumlx, suml2 = _seq_sum(torch.stack([w * x * lf, w * lf * lf]), dim=1)
    L = l & 0xFF
    for _ in range(5):  # for (itry < 5): a pass without change changes nothing later, so no break
        for i in range(x.shape[0]):
            wi, xi, li = w[i], x[i], L[i].to(torch.float32)
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            new_l = _nearest_int(_div(xi * sl2, slx)).clamp(max=nmax)
            nl = new_l.to(torch.float32)
            slx_new = slx + wi * xi * nl
            sl2_new = sl2 + wi * nl * nl
            take = ((slx > 0) & (sl2 > 0) & (new_l != L[i])
                    & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
            L[i] = torch.where(take, new_l & 0xFF, L[i])
            sumlx = torch.where(take, slx_new, sumlx)
            suml2 = torch.where(take, sl2_new, suml2)
    zero = torch.zeros_like(sumlx)
    scale = torch.where(suml2 > 0, _div(sumlx, torch.where(suml2 > 0, suml2, zero + 1)), zero)
    return torch.where(empty, torch.zeros_like(L), L), torch.where(empty, zero, scale)


def _q4_k_weighted(blocks: torch.Tensor, qw: torch.Tensor) -> tuple:
    """quantize_row_q4_K_impl on super-blocks (ns, 256) with quant_weights qw (ns, 256)."""
    ns = blocks.shape[0]
    cols = blocks.T.contiguous()  # (256, ns)
    sum_x2 = _seq_sum(cols * cols)
    sigma2 = _div(2 * sum_x2, torch.full_like(sum_x2, float(QK_K)))  # 2*sum_x2/QK_K
    sub = blocks.reshape(ns * 8, 32).T.contiguous()  # (32 elements, ns*8 sub-blocks)
    # weights[l] = qw[l] * sqrtf(sigma2 + x[32*j + l]*x[32*j + l])
    w = qw.reshape(ns * 8, 32).T.contiguous() * _sqrtf(sigma2.repeat_interleave(8)[None, :] + sub * sub)
    sw = _seq_sum(w).reshape(ns, 8).T  # sw[j] = sum of weights[l], (8, ns)
    # make_qkx3_quants(32, 15, x + 32*j, weights, L + 32*j, &mins[j], Laux, -0.9f, 0.05f, 36, false)
    L, scales, mins = _make_qkx2_quants(sub, w, 15, -0.9, 0.05, 36)
    ls, d_block = _make_qp_quants(scales.reshape(ns, 8).T, sw, 63)
    lm, m_block = _make_qp_quants(mins.reshape(ns, 8).T, sw, 63)
    scale_bytes = _pack_scales_k4(ls.T, lm.T)  # stored 8 bits wide, as the C stores Ls, Lm
    sc, m = _unpack_scales_k4(scale_bytes)  # get_scale_min_k4 in the requantization loop
    d, dmin = _fp16(d_block), _fp16(m_block)
    return d, dmin, scale_bytes, sc, m, _q4_k_requantize(sub, d, dmin, sc, m, L)


def _q4_k(x: torch.Tensor, imp: torch.Tensor | None, sigma2: torch.Tensor | None = None) -> tuple:
    """(scale, offset, q, state) for rows x (rows, G) of Q4_K; sigma2 is per super-block, from x."""
    rows, ns = x.shape[0], x.shape[1] // QK_K
    blocks = x.reshape(rows * ns, QK_K)
    if imp is None:  # quantize_row_q4_K_ref
        d, dmin, sc, m, L = _q4_k_parts(blocks)
        scale_bytes = _pack_scales_k4(sc, m)
    else:  # quantize_row_q4_K_impl: quant_weights + QK_K*i is the same for every row
        qw = imp.reshape(1, ns, QK_K).expand(rows, ns, QK_K).reshape(rows * ns, QK_K)
        d, dmin, scale_bytes, sc, m, L = _q4_k_weighted(blocks, qw)
    # dequantize_row_q4_K: y = (d * sc) * q - (dmin * m)
    scale = (d[:, None] * sc.to(torch.float32)).reshape(rows, ns * 8)
    offset = -(dmin[:, None] * m.to(torch.float32)).reshape(rows, ns * 8)
    state = (d.reshape(rows, ns), dmin.reshape(rows, ns), scale_bytes.reshape(rows, ns, 12))
    return scale, offset, L.reshape(rows, ns * QK_K), state


# ---- Q6_K (quantize_row_q6_K_impl) ---------------------------------------------------------

def _q6_k(x: torch.Tensor, imp: torch.Tensor | None, sigma2: torch.Tensor | None = None) -> tuple:
    """(scale, offset, q, state) for rows x (rows, G) of Q6_K (sigma2 is commented out in the C)."""
    rows, ns = x.shape[0], x.shape[1] // QK_K
    blocks = x.reshape(rows * ns, QK_K)
    if imp is None:  # quantize_row_q6_K_ref
        d, sc, L, empty = _q6_k_parts(blocks)
    else:  # make_qx_quants(16, 32, x + 16*ib, L + 16*ib, 1, qw) with qw the imatrix itself
        sub = blocks.reshape(rows * ns * 16, 16).T.contiguous()  # (16 elements, sub-blocks)
        qw = imp.reshape(ns * 16, 16).T.repeat(1, rows)
        d, sc, L, empty = _q6_k_super(sub, *_make_qx_quants_rmse1(sub, 32, qw))
    # memset(&y[i], 0, sizeof(block_q6_K)): d, scales and codes of an empty super-block are 0
    d = torch.where(empty, torch.zeros_like(d), d)
    sc = torch.where(empty[:, None], torch.zeros_like(sc), sc)
    L = torch.where(empty[:, None], torch.zeros_like(L), L)
    # dequantize_row_q6_K: y = d * sc * (q - 32) == (d * sc) * q + (-32 * d * sc) exactly
    scale = (d[:, None] * sc.to(torch.float32)).reshape(rows, ns * 16)
    state = (d.reshape(rows, ns), sc.reshape(rows, ns, 16))
    return scale, -32 * scale, L.reshape(rows, ns * QK_K), state


# ---- public API ----------------------------------------------------------------------------

def _qtype(qtype: object) -> str:
    name = getattr(qtype, "value", qtype)
    if name not in TYPES:
        raise ValueError(f"unsupported type {name!r}: choose one of {', '.join(TYPES)}")
    return str(name)


def _by_rows(fn: Callable[..., tuple], x: torch.Tensor, imp: torch.Tensor | None,
             sigma2: torch.Tensor | None) -> tuple:
    """fn on chunks of rows of x, results concatenated along rows (None stays None)."""
    step = max(1, _CHUNK // x.shape[1])
    parts = [fn(x[r:r + step], imp, None if sigma2 is None else sigma2[r:r + step])
             for r in range(0, x.shape[0], step)]
    cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
    scale, offset, q, state = (list(p) for p in zip(*parts))
    return cat(scale), cat(offset), cat(q), tuple(cat(list(s)) for s in zip(*state))


def choose(x: torch.Tensor, qtype: str, importance: torch.Tensor | None,
           sigma2: torch.Tensor | None = None) -> Group:
    """ggml's choice of scales (and mins) and codes for x (rows, G) = one group of columns of a weight.

    G is one block of the type (32, or 256 for K-quants) or a multiple of it. importance (G,): the
    imatrix values of those columns (None: the reference quantizer's choice); sigma2 (rows,):
    row_sigma2 of the *whole* rows, required with importance for Q4_0, Q4_1, Q5_0, Q5_1 (Q4_K
    computes its sigma2 per super-block from x, Q6_K and Q8_0 use none, so it is ignored there).
    """
    qtype = _qtype(qtype)
    x = x.detach().to(torch.float32)
    block = QK_K if qtype in K_QUANTS else 32
    if x.dim() != 2 or 0 in x.shape or x.shape[1] % block:
        raise ValueError(f"{qtype}: x must be (rows, G) with G a multiple of {block}, got {tuple(x.shape)}")
    imp = None
    if importance is not None and qtype != "Q8_0":
        imp = importance.detach().to(torch.float32).reshape(-1)
        if imp.numel() != x.shape[1]:
            raise ValueError(f"importance has {imp.numel()} values for {x.shape[1]} columns")
        if qtype in USES_SIGMA2:
            if sigma2 is None:
                raise ValueError(f"{qtype} with importance needs sigma2 = row_sigma2(whole rows)")
            sigma2 = sigma2.detach().to(torch.float32).reshape(-1)
            if sigma2.numel() != x.shape[0]:
                raise ValueError(f"sigma2 has {sigma2.numel()} values for {x.shape[0]} rows")
    if qtype in LEGACY:
        fn: Callable[..., tuple] = lambda rows, i, s: _legacy(rows, qtype, i, s)  # noqa: E731
    else:
        fn = _q4_k if qtype == "Q4_K" else _q6_k
    scale, offset, q, state = _by_rows(fn, x, imp, sigma2 if imp is not None else None)
    qmin, qmax = CODE_RANGE[qtype]
    return Group(qtype, scale, offset, q, qmin, qmax, SUB[qtype], state)


def values(group: Group, q: torch.Tensor) -> torch.Tensor:
    """(rows, G) float32 scale * q + offset per sub-block: llama.cpp's dequantization of pack(group, q)."""
    scale = group.scale.repeat_interleave(group.sub, dim=1)
    offset = group.offset.repeat_interleave(group.sub, dim=1)
    return scale * q + offset


def pack(group: Group, q: torch.Tensor) -> torch.Tensor:
    """(rows, type_size * blocks) uint8 block bytes with group's scales and the codes q (rows, G).

    q may differ from group.q (GPTQ picks its own codes); codes outside [qmin, qmax] or
    non-integers raise ValueError.
    """
    q = q.detach().to(torch.float32)
    if q.shape != group.q.shape:
        raise ValueError(f"codes of shape {tuple(q.shape)} for a group of shape {tuple(group.q.shape)}")
    if (q < group.qmin).any() or (q > group.qmax).any() or (q != torch.round(q)).any():
        raise ValueError(f"{group.qtype} codes must be integers in [{group.qmin}, {group.qmax}]")
    rows = q.shape[0]
    if group.qtype in LEGACY:
        d, m = group.state
        c = formats.Codes(d.reshape(-1, 1), q.reshape(-1, 32), None if m is None else m.reshape(-1, 1))
        return formats.pack(c, group.qtype).reshape(rows, -1)
    if group.qtype == "Q4_K":
        d, dmin, scale_bytes = group.state
        return _q4_k_pack(d.reshape(-1), dmin.reshape(-1), scale_bytes.reshape(-1, 12),
                          q.reshape(-1, QK_K)).reshape(rows, -1)
    d, sc = group.state
    return _q6_k_pack(d.reshape(-1), sc.reshape(-1, 16), q.reshape(-1, QK_K)).reshape(rows, -1)


def quantize(x: torch.Tensor, qtype: str, importance: torch.Tensor | None = None) -> torch.Tensor:
    """(..., row_bytes) uint8, byte-identical to ggml_quantize_chunk(type, x, dst, 0, rows, n_per_row,
    importance) for rows along the last dim; importance None gives formats.quantize's bytes."""
    qtype = _qtype(qtype)
    rows = x.detach().to(torch.float32).reshape(-1, x.shape[-1])
    sigma2 = row_sigma2(rows) if importance is not None and qtype in USES_SIGMA2 else None
    group = choose(rows, qtype, importance, sigma2)
    return pack(group, group.q).reshape(*x.shape[:-1], -1)
