"""GGUF K-quants Q4_K and Q6_K in torch, byte for byte as ggml's reference quantizers.

A K-quant super-block holds QK_K = 256 weights split into sub-blocks with their own 6- or
8-bit scale, and one fp16 super-scale. The scale search in ggml (make_qkx2_quants for Q4_K,
make_qx_quants for Q6_K, both in ggml/src/ggml-quants.c) accumulates float32 sums element by
element, so the chosen scale depends on the summation order; no library reproduces it, hence
this module. Everything is vectorized over all sub-blocks; only the fixed loops of the C code
(the 32/16 summed elements, the 21/18 candidate scales) are Python loops.

Exactness rules used throughout:
- every sum is accumulated left to right in float32 (`_seq_sum`), never with torch.sum;
- `c / t` with a Python float c would run as t.reciprocal() * c in torch, so quotients
  always have tensor numerators (`_div`);
- float constants such as 0.1f * is are rounded to float32 as C does (`_f32`);
- sqrtf is correctly rounded (`_sqrtf`), torch.sqrt on float32 is not on every CPU;
- `nearest_int` is emulated with its own bit trick, not torch.round, so out-of-range
  values give the same garbage the C code then clamps. The scale searches, which run it
  20-40 times per block, use torch.round (equal for |v| < 2**22) and fall back to the bit
  trick when a block's values left that range (`_codes`, `_in_range`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

QK_K = 256  # weights per super-block (ggml-common.h)
Q4_K_LAYOUT = (256, 144)  # block_q4_K {half d; half dmin; uint8 scales[12]; uint8 qs[128]}
Q6_K_LAYOUT = (256, 210)  # block_q6_K {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d}
GROUP_MAX_EPS = float(np.float32(1e-15))  # GROUP_MAX_EPS 1e-15f: "all zero" threshold


def _f32(v: float) -> float:
    """A Python float holding exactly the float32 value C would use."""
    return float(np.float32(v))


def _div(num: torch.Tensor | float, den: torch.Tensor) -> torch.Tensor:
    """IEEE float32 num / den (a Python-scalar numerator would become den.reciprocal() * num)."""
    if not isinstance(num, torch.Tensor):
        num = torch.tensor(num, dtype=torch.float32)
    return torch.div(num, den)


def _nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml nearest_int: add 1.5 * 2**23 and read the low mantissa bits (round half to even)."""
    bits = (v + 12582912.0).view(torch.int32)
    return (bits & 0x007FFFFF) - 0x00400000


_ROUND_EXACT = float(2 ** 22)  # |v| below this: nearest_int(v) == torch.round(v), both half to even


def _codes(v: torch.Tensor, lo: int, hi: int, exact: bool) -> torch.Tensor:
    """MAX(lo, MIN(hi, nearest_int(v))) as float32, in place in v (the searches reuse buffers).

    exact=False uses torch.round, which equals nearest_int only for |v| < 2**22; the scale searches
    check that with _in_range and redo the work with exact=True (the bit trick) when it failed.
    """
    if exact:
        return v.copy_(_nearest_int(v).clamp_(lo, hi))
    return v.round_().clamp_(lo, hi)


def _in_range(*vs: torch.Tensor) -> torch.Tensor:
    """Whether torch.round agrees with nearest_int on every v (False for inf and NaN).

    The searches compute v = iscale * (x - min) (or iscale * x), monotone in x under float
    rounding, so the values at each block's smallest and largest x bound all of them.
    """
    ok = vs[0].abs() < _ROUND_EXACT
    for v in vs[1:]:
        ok &= v.abs() < _ROUND_EXACT
    return ok


def _sqrtf(v: torch.Tensor) -> torch.Tensor:
    """C sqrtf (correctly rounded) for v >= 0.

    torch's float32 sqrt on CPU is off by one ulp for ~17% of inputs (vectorized
    approximation), which moves Q4_K's weights. Take the float64 root rounded to float32, then
    settle the last bit exactly: midpoints between neighbouring float32 values have 25
    significant bits, so their squares are exact in float64.
    """
    a = v.to(torch.float64)
    r = torch.sqrt(a).to(torch.float32)
    up = torch.nextafter(r, torch.full_like(r, float("inf")))
    down = torch.nextafter(r, torch.zeros_like(r))
    mid_up = (r.double() + up.double()) / 2
    mid_down = (r.double() + down.double()) / 2
    r = torch.where(a > mid_up * mid_up, up, r)
    return torch.where((a < mid_down * mid_down) & (r > 0), down, r)


def _seq_sum(t: torch.Tensor, start_with_first: bool = False, dim: int = 0) -> torch.Tensor:
    """Left-to-right float32 sum over dim, like `float s = 0; for (...) s += t[i];`.

    With start_with_first the accumulator starts at t[0] instead of 0 (make_qkx2_quants
    initialises sum_w and sum_x that way; it differs for a leading -0.0 only).
    """
    rows = t.movedim(dim, 0).unbind(0)  # one call for all the row views
    acc = rows[0].clone() if start_with_first else torch.zeros_like(rows[0])
    for row in rows[1:] if start_with_first else rows:
        acc += row
    return acc


_CHUNK = 1024  # super-blocks per pass: keeps the ~20 temporaries of the scale search in cache


def _by_superblocks(x: torch.Tensor, pack: Callable[[torch.Tensor], torch.Tensor], type_size: int) -> torch.Tensor:
    """Apply pack (n_super, 256) float32 -> (n_super, type_size) uint8 to chunks of x's super-blocks."""
    if x.shape[-1] % QK_K:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of the K-quant block size {QK_K}")
    blocks = x.detach().to(torch.float32).reshape(-1, QK_K)  # (n_super, 256)
    out = torch.empty(blocks.shape[0], type_size, dtype=torch.uint8, device=x.device)
    for start in range(0, blocks.shape[0], _CHUNK):
        out[start:start + _CHUNK] = pack(blocks[start:start + _CHUNK])
    return out.reshape(*x.shape[:-1], -1)


def _fp16(v: torch.Tensor) -> torch.Tensor:
    """GGML_FP32_TO_FP16 (round to nearest even) and back to float32, as the C code re-reads it."""
    return v.to(torch.float16).to(torch.float32)


def _half_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).view(torch.uint8).reshape(-1, 2)  # little-endian fp16


# ---- Q4_K -------------------------------------------------------------------------------

def _make_qkx2_quants(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float,
                      nstep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants with use_mad=false on x, w of shape (n, B): n summed elements, B sub-blocks.

    Returns (L codes (n, B) float, scale (B,), the_min (B,)), the_min being -min >= 0.
    (make_qkx3_quants with weights is the same computation: it only tests `max <= min`.)
    """
    return _qkx_search(x, w, nmax, rmin, rdelta, nstep, False) or _qkx_search(x, w, nmax, rmin, rdelta, nstep, True)


def _qkx_search(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
                exact: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """_make_qkx2_quants; None when the fast rounding (exact=False) could differ from nearest_int."""
    xmin, mx = x.amin(0), x.amax(0)
    sum_w = _seq_sum(w, start_with_first=True)
    sum_x = _seq_sum(w * x, start_with_first=True)
    mn = torch.where(xmin > 0, torch.zeros_like(xmin), xmin)  # if (min > 0) min = 0;
    flat = mx == mn
    iscale = _div(float(nmax), mx - mn)
    scale = _div(1.0, iscale)
    best_is, best_mn = iscale, mn  # L = codes(best_is * (x - best_mn)), rebuilt once at the end
    bad = ~_in_range(iscale * (xmin - mn), iscale * (mx - mn))
    diff = (scale * _codes(iscale * (x - mn), 0, nmax, exact)).add_(mn).sub_(x)  # scale*L[i] + min - x[i]
    best = _seq_sum(diff.mul_(diff).mul_(w))  # best_error += w * diff*diff
    buf = torch.empty(x.shape[0], 3, x.shape[1], dtype=torch.float32, device=x.device)
    laux = torch.empty_like(x)  # reused every step, like diff
    for step in range(nstep + 1):
        # iscale = (rmin + rdelta*is + nmax)/(max - min), all in float32
        c = _f32(_f32(np.float32(rmin) + _f32(np.float32(rdelta) * np.float32(step))) + np.float32(nmax))
        # min is the best candidate's offset so far: C reuses the updated `min` in both places
        iscale = _div(c, mx - mn)
        bad |= ~_in_range(iscale * (xmin - mn), iscale * (mx - mn))
        _codes(torch.sub(x, mn, out=laux).mul_(iscale), 0, nmax, exact)  # (n, B)
        wl = torch.mul(w, laux, out=buf[:, 0])
        torch.mul(wl, laux, out=buf[:, 1])
        torch.mul(wl, x, out=buf[:, 2])
        sum_l, sum_l2, sum_xl = _seq_sum(buf)  # each (B,)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = _div(sum_w * sum_xl - sum_x * sum_l, det)
        this_min = _div(sum_l2 * sum_x - sum_l * sum_xl, det)
        clip = this_min > 0  # then this_min = 0; this_scale = sum_xl / sum_l2;
        this_min = torch.where(clip, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(clip, _div(sum_xl, sum_l2), this_scale)
        torch.mul(laux, this_scale, out=diff).add_(this_min).sub_(x)  # this_scale * Laux[i] + this_min - x[i]
        cur = _seq_sum(diff.mul_(diff).mul_(w))
        better = (det > 0) & (cur < best)
        best_is = torch.where(better, iscale, best_is)
        best_mn = torch.where(better, mn, best_mn)
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)
    if not exact and bool((bad & ~flat).any()):
        return None
    L = _codes((x - best_mn).mul_(best_is), 0, nmax, exact)  # for (i) L[i] = Laux[i] of the best step
    # max == min: L = 0, scale 0, the_min = -min
    L = torch.where(flat, torch.zeros_like(L), L)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    return L, scale, -mn


def _positive_max(v: torch.Tensor) -> torch.Tensor:
    """`float m = 0; if (v > m) m = v;` over dim 1: +0.0 when nothing is positive."""
    m = v.amax(dim=1)
    return torch.where(m > 0, m, torch.zeros_like(m))


def _q4_k_parts(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_row_q4_K_ref up to packing: (d, dmin as float32 of fp16, ls, lm (n_super, 8), L (n_super, 256))."""
    ns = blocks.shape[0]
    sub = blocks.reshape(ns * 8, 32).T.contiguous()  # (32 elements, n_super*8 sub-blocks)
    av_x = _sqrtf(_seq_sum(sub * sub) / 32)  # sqrtf(sum_x2/32)
    weights = av_x + sub.abs()
    L, scales, mins = _make_qkx2_quants(sub, weights, 15, -1.0, 0.1, 20)
    scales, mins = scales.reshape(ns, 8), mins.reshape(ns, 8)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    zero = torch.zeros_like(max_scale)
    inv_scale = torch.where(max_scale > 0, _div(63.0, max_scale), zero)[:, None]
    inv_min = torch.where(max_min > 0, _div(63.0, max_min), zero)[:, None]
    # uint8_t ls = nearest_int(...); ls = MIN(63, ls): the uint8 store wraps, then clamps
    ls = (_nearest_int(inv_scale * scales) & 0xFF).clamp(max=63)
    lm = (_nearest_int(inv_min * mins) & 0xFF).clamp(max=63)
    d = _fp16(max_scale / 63)
    dmin = _fp16(max_min / 63)
    return d, dmin, ls, lm, _q4_k_requantize(sub, d, dmin, ls, lm, L)


def _q4_k_requantize(sub: torch.Tensor, d: torch.Tensor, dmin: torch.Tensor, sc: torch.Tensor, m: torch.Tensor,
                     L: torch.Tensor) -> torch.Tensor:
    """The last pass of quantize_row_q4_K_ref / quantize_row_q4_K_impl: requantize the sub-blocks
    sub (32, n_super*8) with the stored fp16 d, dmin and 6-bit sc, m (n_super, 8) as
    get_scale_min_k4 reads them back; sub-blocks whose d * sc is 0 keep L. Returns (n_super, 256)."""
    ns = d.shape[0]
    sub_d = (d[:, None] * sc.to(torch.float32)).reshape(1, ns * 8)
    sub_m = (dmin[:, None] * m.to(torch.float32)).reshape(1, ns * 8)
    relq = _nearest_int(_div(sub + sub_m, sub_d)).clamp(0, 15).to(torch.float32)
    L = torch.where(sub_d != 0, relq, L)
    return L.T.reshape(ns, QK_K)


def _pack_scales_k4(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """The 12 scale bytes of block_q4_K (inverse of get_scale_min_k4): 6-bit ls, lm for 8 sub-blocks."""
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    lo = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    mid = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    hi = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return torch.cat([lo, mid, hi], dim=1)  # (n_super, 12)


def _unpack_scales_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """get_scale_min_k4 for j = 0..7 at once: (sc, m), each (n_super, 8) uint8."""
    lo, mid, hi = s[:, :4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], dim=1)
    m = torch.cat([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], dim=1)
    return sc, m


def _q4_k_pack(d: torch.Tensor, dmin: torch.Tensor, scales: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """block_q4_K bytes from fp16 d, dmin (n_super,), the 12 scale bytes and codes L (n_super, 256) in 0..15."""
    q = L.to(torch.uint8).reshape(-1, 4, 2, 32)  # (n_super, 64-chunk, half, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)  # q[l] = L[j+l] | L[j+l+32] << 4
    return torch.cat([_half_bytes(d), _half_bytes(dmin), scales, qs], dim=1)


def _q4_k_bytes(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin, ls, lm, L = _q4_k_parts(blocks)
    return _q4_k_pack(d, dmin, _pack_scales_k4(ls, lm), L)


def quantize_q4_k(x: torch.Tensor) -> torch.Tensor:
    """Bytes of block_q4_K rows (quantize_row_q4_K_ref): shape (..., n/256*144) uint8."""
    return _by_superblocks(x, _q4_k_bytes, Q4_K_LAYOUT[1])


def dequantize_q4_k(data: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """dequantize_row_q4_K: y = (d * sc) * q - (dmin * m), per 32-weight sub-block."""
    b = data.reshape(-1, Q4_K_LAYOUT[1])
    d = b[:, 0:2].contiguous().view(torch.float16).to(torch.float32)  # (n_super, 1)
    dmin = b[:, 2:4].contiguous().view(torch.float16).to(torch.float32)
    sc, m = _unpack_scales_k4(b[:, 4:16])
    qs = b[:, 16:].reshape(-1, 4, 1, 32)
    q = torch.cat([qs & 0xF, qs >> 4], dim=2).reshape(-1, 8, 32).to(torch.float32)
    d1 = (d * sc.to(torch.float32))[:, :, None]
    m1 = (dmin * m.to(torch.float32))[:, :, None]
    return (d1 * q - m1).reshape(shape)


# ---- Q6_K -------------------------------------------------------------------------------

def _make_qx_quants_rmse1(x: torch.Tensor, nmax: int, qw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw) on x of shape (n, B).

    Returns (L codes in 0..2*nmax-1 (n, B) float, scale (B,)); weights are w = qw, or x*x without qw.
    """
    return _qx_search(x, nmax, qw, False) or _qx_search(x, nmax, qw, True)


def _qx_search(x: torch.Tensor, nmax: int, qw: torch.Tensor | None,
               exact: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """_make_qx_quants_rmse1; None when the fast rounding (exact=False) could differ from nearest_int."""
    absx = x.abs()
    imax = absx.argmax(dim=0, keepdim=True)  # first index of the largest |x|, like `ax > amax`
    vmax = torch.gather(x, 0, imax)[0]
    amax = torch.gather(absx, 0, imax)[0]
    xmin, xmax = x.amin(0), x.amax(0)
    w = x * x if qw is None else qw
    wx = w * x
    buf = torch.empty(x.shape[0], 2, x.shape[1], dtype=torch.float32, device=x.device)
    l = torch.empty_like(x)

    def fit(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # l = MAX(-nmax, MIN(nmax-1, nearest_int(iscale*x[i])))
        _codes(torch.mul(x, iscale, out=l), -nmax, nmax - 1, exact)
        torch.mul(wx, l, out=buf[:, 0])  # sumlx += w*x[i]*l
        torch.mul(w, l, out=buf[:, 1]).mul_(l)  # suml2 += w*l*l
        sumlx, suml2 = _seq_sum(buf)
        return sumlx, suml2, ~_in_range(iscale * xmin, iscale * xmax)

    best_is = _div(float(-nmax), vmax)  # L = codes(best_is * x) + nmax, rebuilt once at the end
    sumlx, suml2, bad = fit(best_is)
    zero = torch.zeros_like(sumlx)
    scale = torch.where(suml2 != 0, _div(sumlx, suml2), zero)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        c = _f32(np.float32(nmax) + _f32(np.float32(0.1) * np.float32(step)))  # nmax + 0.1f*is
        iscale = _div(-c, vmax)
        sumlx, suml2, out_of_range = fit(iscale)
        bad |= out_of_range
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_is = torch.where(better, iscale, best_is)
        scale = torch.where(better, _div(sumlx, suml2), scale)
        best = torch.where(better, scale * sumlx, best)
    small = amax < GROUP_MAX_EPS  # all zero: L = 0 (not nmax), scale 0
    if not exact and bool((bad & ~small).any()):
        return None
    L = _codes(best_is * x, -nmax, nmax - 1, exact) + nmax
    return torch.where(small, torch.zeros_like(L), L), torch.where(small, zero, scale)


def _q6_k_parts(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_row_q6_K_ref up to packing: (d float32 of fp16, int8 scales (n_super, 16), L (n_super, 256), zero block mask)."""
    ns = blocks.shape[0]
    sub = blocks.reshape(ns * 16, 16).T.contiguous()  # (16 elements, n_super*16 sub-blocks)
    L, scales = _make_qx_quants_rmse1(sub, 32)
    return _q6_k_super(sub, L, scales)


def _q6_k_super(sub: torch.Tensor, L: torch.Tensor, scales: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_row_q6_K_ref / _impl after make_qx_quants: the int8 sub-scales, fp16 d and the
    requantized codes from sub (16, n_super*16), its codes L and scales (n_super*16,)."""
    ns = sub.shape[1] // 16
    scales = scales.reshape(ns, 16)
    imax = scales.abs().argmax(dim=1, keepdim=True)  # first largest |scale| (`abs_scale > max_abs_scale`)
    max_scale = torch.gather(scales, 1, imax)[:, 0]
    empty = max_scale.abs() < GROUP_MAX_EPS  # memset(&y[i], 0, ...)
    max_scale = torch.where(empty, torch.ones_like(max_scale), max_scale)  # avoid 0 division; masked later
    iscale = _div(-128.0, max_scale)
    d = _fp16(_div(1.0, iscale))
    # y[i].scales[ib] = MIN(127, nearest_int(iscale*scales[ib])), stored into int8
    sc = (_nearest_int(iscale[:, None] * scales).clamp(max=127) & 0xFF).to(torch.uint8).view(torch.int8)
    sub_d = (d[:, None] * sc.to(torch.float32)).reshape(1, ns * 16)
    relq = _nearest_int(_div(sub, sub_d)).clamp(-32, 31).to(torch.float32) + 32
    L = torch.where(sub_d != 0, relq, L)  # sub-blocks whose d is 0 keep make_qx_quants' codes
    return d, sc, L.T.reshape(ns, QK_K), empty


def _q6_k_pack(d: torch.Tensor, sc: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """block_q6_K bytes from fp16 d (n_super,), int8 scales (n_super, 16) and codes L (n_super, 256) in 0..63."""
    q = L.to(torch.uint8).reshape(-1, 2, 4, 32)  # (n_super, 128-chunk, quarter, 32)
    lo, hi = q & 0xF, q >> 4
    ql = torch.cat([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], dim=2)  # (n_super, 2, 64)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)  # (n_super, 2, 32)
    return torch.cat([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(torch.uint8), _half_bytes(d)], dim=1)


def _q6_k_bytes(blocks: torch.Tensor) -> torch.Tensor:
    d, sc, L, empty = _q6_k_parts(blocks)
    out = _q6_k_pack(d, sc, L)
    out[empty] = 0  # memset(&y[i], 0, sizeof(block_q6_K))
    return out


def quantize_q6_k(x: torch.Tensor) -> torch.Tensor:
    """Bytes of block_q6_K rows (quantize_row_q6_K_ref): shape (..., n/256*210) uint8."""
    return _by_superblocks(x, _q6_k_bytes, Q6_K_LAYOUT[1])


def dequantize_q6_k(data: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """dequantize_row_q6_K: y = (d * sc) * (q - 32), per 16-weight sub-block."""
    b = data.reshape(-1, Q6_K_LAYOUT[1])
    ql = b[:, :128].reshape(-1, 2, 2, 32)  # (n_super, chunk, half, 32)
    qh = b[:, 128:192].reshape(-1, 2, 1, 32)
    sc = b[:, 192:208].contiguous().view(torch.int8).to(torch.float32)  # (n_super, 16)
    d = b[:, 208:210].contiguous().view(torch.float16).to(torch.float32)  # (n_super, 1)
    lo = torch.cat([ql & 0xF, ql >> 4], dim=2)  # quarters 0, 1, 2, 3 of each 128-chunk
    hi = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2)
    q = ((lo | (hi << 4)).to(torch.float32) - 32).reshape(-1, 16, 16)
    return ((d * sc)[:, :, None] * q).reshape(shape)
