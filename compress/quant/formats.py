"""GGUF block formats in torch: quantize to the exact bytes llama.cpp stores, and back.

This module is the one numeric truth of slimkit: the GGUF writer packs blocks with it and
quantization-aware training fake-quantizes through it. Every reference quantizer here matches
ggml's (ggml/src/ggml-quants.c, `quantize_row_*_ref`) bit for bit: float32 arithmetic in the
same order, the same rounding, scales rounded to fp16 round-to-nearest-even like
GGML_FP32_TO_FP16. Tests compare the bytes with the `gguf` package's reference quantizers and
with llama.cpp's own.

The legacy formats are split into three steps so that training can choose its own scales:
  codes(x)            the reference choice of scale d (and min m) and integer codes q
  pack(d, q, m)       the block bytes: fp16 d (and m), then the codes bit-packed
  values(d, q, m)     what llama.cpp's dequantize_row_* computes from those bytes
quantize = pack(codes(x)); dequantize = values(unpack(bytes)). A QAT student with learned scales
packs its own (d, q, m) and the file reproduces its forward pass exactly. The K-quants (Q4_K,
Q6_K, compress/quant/kquants.py) have only the reference path.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, NamedTuple

import torch

from compress.quant import kquants


class BlockType(str, Enum):
    """Block formats implemented here (names as in gguf.GGMLQuantizationType)."""

    Q8_0 = "Q8_0"
    Q4_0 = "Q4_0"
    Q4_1 = "Q4_1"
    Q5_0 = "Q5_0"
    Q5_1 = "Q5_1"


@dataclass(frozen=True)
class BlockLayout:
    block_size: int  # weights per block (QK8_0 = QK4_0 = QK4_1 = QK5_0 = QK5_1 = 32)
    type_size: int  # bytes per block
    bits: int  # bits per code
    offset: int  # symmetric formats store q + offset (dequantize subtracts it); 0 for the others
    affine: bool  # y = d * q + m (Q4_1, Q5_1) instead of y = d * (q - offset)
    code_min: int  # the codes a block may hold; ggml's own quantizers never write -128 into
    code_max: int  # a Q8_0 block (its AVX2 dot products take |q| with sign tricks)


LAYOUTS: dict[BlockType, BlockLayout] = {
    # block_q8_0 {ggml_half d; int8_t qs[32]}
    BlockType.Q8_0: BlockLayout(32, 2 + 32, 8, 0, False, -127, 127),
    # block_q4_0 {ggml_half d; uint8_t qs[16]}: nibbles, stored q + 8
    BlockType.Q4_0: BlockLayout(32, 2 + 16, 4, 8, False, 0, 15),
    # block_q4_1 {ggml_half d; ggml_half m; uint8_t qs[16]}
    BlockType.Q4_1: BlockLayout(32, 2 + 2 + 16, 4, 0, True, 0, 15),
    # block_q5_0 {ggml_half d; uint8_t qh[4]; uint8_t qs[16]}: 5th bits in qh, stored q + 16
    BlockType.Q5_0: BlockLayout(32, 2 + 4 + 16, 5, 16, False, 0, 31),
    # block_q5_1 {ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[16]}
    BlockType.Q5_1: BlockLayout(32, 2 + 2 + 4 + 16, 5, 0, True, 0, 31),
}


class Codes(NamedTuple):
    """One tensor's blocks: scales d (n_blocks, 1), codes q (n_blocks, block_size) as float32
    integers in [code_min, code_max], mins m (n_blocks, 1) for the affine formats."""

    d: torch.Tensor
    q: torch.Tensor
    m: torch.Tensor | None = None


def layout(btype: BlockType | str) -> BlockLayout:
    return LAYOUTS[BlockType(btype)]


def _name(btype: BlockType | str) -> str:
    return btype.value if isinstance(btype, BlockType) else str(btype)


def block_size(btype: BlockType | str) -> int:
    """Weights per block of any type this module packs (legacy or K-quant)."""
    name = _name(btype)
    return _K_LAYOUTS[name][0] if name in _K_LAYOUTS else layout(name).block_size


def type_size(btype: BlockType | str) -> int:
    """Bytes per block of any type this module packs."""
    name = _name(btype)
    return _K_LAYOUTS[name][1] if name in _K_LAYOUTS else layout(name).type_size


def can_quantize(shape: tuple[int, ...] | torch.Size, btype: BlockType | str) -> bool:
    """Blocks run along the last (row) dimension; it must be a whole number of blocks."""
    return len(shape) >= 1 and shape[-1] % block_size(btype) == 0


def _blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    if x.shape[-1] % block_size:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of the block size {block_size}")
    return x.detach().to(torch.float32).reshape(-1, block_size)  # (n_blocks, block_size)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C roundf: halves away from zero (torch.round is half-to-even).

    floor(|x| + 0.5) is not exact in float32 (0.49999997 + 0.5 rounds up to 1.0), so split
    off the integer part first; every step below is exact.
    """
    a = x.abs()
    fl = torch.floor(a)
    return torch.sign(x) * (fl + torch.floor(2 * (a - fl)))


def _div(x: torch.Tensor, c: float) -> torch.Tensor:
    """x / c as IEEE float32 division on every device: a tensor / Python-scalar division runs as a
    multiplication by the reciprocal on CUDA, which is not the C code's `max / -8` bit for bit."""
    return torch.div(x, torch.full_like(x, c))


def _inverse(d: torch.Tensor) -> torch.Tensor:
    # `const float id = d ? 1.0f/d : 0.0f;` (torch.div with a tensor numerator is IEEE division;
    # `1.0 / t` runs as t.reciprocal(), see compress/quant/kquants.py)
    one = torch.ones_like(d)
    return torch.where(d == 0, torch.zeros_like(d), torch.div(one, torch.where(d == 0, one, d)))


class _Exact(torch.autograd.Function):
    """y = fn(x) exactly in the forward pass, dy/dx = 1 in the backward pass (straight-through).

    `x + (fn(x) - x).detach()` is not exact in floating point; this is.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn(x) forward, identity gradient (the straight-through estimator)."""
    return _Exact.apply(x, fn) if x.requires_grad else fn(x)


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    """GGML_FP32_TO_FP16 then back: round-to-nearest-even to fp16, as float32; gradient passes."""
    return straight_through(x, lambda t: t.to(torch.float16).to(torch.float32))


def _fp16_bytes(d: torch.Tensor) -> torch.Tensor:
    return d.to(torch.float16).view(torch.uint8).reshape(-1, 2)  # (n_blocks, 2), little-endian


def _fp16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).to(torch.float32)  # (n_blocks, 1)


def _signed_max(blocks: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude, sign kept; the first one on ties, like the C loop's `<`."""
    imax = blocks.abs().argmax(dim=1, keepdim=True)
    return torch.gather(blocks, 1, imax)  # (n_blocks, 1)


# ---- reference choice of scales and codes (quantize_row_*_ref) ---------------------------

def _scale_q8_0(b: torch.Tensor) -> tuple[torch.Tensor, None]:
    # quantize_row_q8_0_ref: d = amax / ((1 << 7) - 1)
    return _div(b.abs().amax(dim=1, keepdim=True), 127.0), None


def _scale_symmetric(b: torch.Tensor, half: int) -> tuple[torch.Tensor, None]:
    # quantize_row_q4_0_ref (half 8) / quantize_row_q5_0_ref (half 16): d = max / -half
    return _div(_signed_max(b), -float(half)), None


def _scale_affine(b: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    # quantize_row_q4_1_ref (levels 15) / quantize_row_q5_1_ref (levels 31): d = (max - min) / levels
    lo = b.amin(dim=1, keepdim=True)
    return _div(b.amax(dim=1, keepdim=True) - lo, float(levels)), lo


_SCALES: dict[BlockType, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]] = {
    BlockType.Q8_0: _scale_q8_0,
    BlockType.Q4_0: lambda b: _scale_symmetric(b, 8),
    BlockType.Q5_0: lambda b: _scale_symmetric(b, 16),
    BlockType.Q4_1: lambda b: _scale_affine(b, 15),
    BlockType.Q5_1: lambda b: _scale_affine(b, 31),
}


def code_values(b: torch.Tensor, btype: BlockType | str, d: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
    """The codes ggml's reference quantizer gives blocks b (n_blocks, block_size) for the float32
    scale d (and min m), before the scales are rounded to fp16:
      Q8_0            q = roundf(x * id)
      Q4_0 / Q5_0     q = MIN(2h - 1, (int8_t)(x * id + h + 0.5f)), h = 8 / 16 (the cast truncates)
      Q4_1 / Q5_1     q = MIN(levels, (uint8_t)((x - m) * id + 0.5f))
    with id = d ? 1/d : 0. Differentiable: the rounding is straight-through and the clamp to the
    format's range stops the gradient (LSQ), so QAT can learn d and m through the same formula.
    """
    lay = layout(btype)
    inv = _inverse(d)
    if BlockType(btype) is BlockType.Q8_0:
        q = straight_through(b * inv, _roundf)
    elif lay.affine:
        q = straight_through((b - m) * inv + 0.5, torch.trunc)
    else:
        q = straight_through(b * inv + (lay.offset + 0.5), torch.trunc)
    return torch.clamp(q, lay.code_min, lay.code_max)


def codes(x: torch.Tensor, btype: BlockType | str) -> Codes:
    """ggml's reference (d, q, m) for the rows of x (float32 d and m, before fp16 storage)."""
    btype = BlockType(btype)
    b = _blocks(x, LAYOUTS[btype].block_size)
    d, m = _SCALES[btype](b)
    return Codes(d, code_values(b, btype, d, m), m)


def values(c: Codes, btype: BlockType | str) -> torch.Tensor:
    """dequantize_row_*: y = d * (q - offset), or y = d * q + m, with d and m as stored (fp16).

    Differentiable in d, q and m (QAT builds on it); shape (n_blocks, block_size).
    """
    lay = layout(btype)
    d = fp16_round(c.d)
    if lay.affine:
        return c.q * d + fp16_round(c.m)
    return (c.q - lay.offset) * d if lay.offset else c.q * d


# ---- bytes -----------------------------------------------------------------------------------

def _nibbles(q: torch.Tensor) -> torch.Tensor:
    # qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4), j < 16
    q = q.to(torch.uint8).reshape(-1, 2, 16)  # (n_blocks, halves, 16)
    return (q[:, 0, :] & 0x0F) | ((q[:, 1, :] & 0x0F) << 4)


def _high_bits(q: torch.Tensor) -> torch.Tensor:
    # qh: bit j of a little-endian uint32 holds bit 4 of code j (quantize_row_q5_0_ref's
    # `qh |= ((xi0 & 0x10u) >> 4) << (j + 0)` and `<< (j + qk/2)`), as 4 bytes
    bits = (q.to(torch.uint8) >> 4) & 1  # (n_blocks, 32)
    weights = (1 << torch.arange(8, dtype=torch.int32, device=q.device)).to(torch.uint8)
    return (bits.reshape(-1, 4, 8) * weights).sum(dim=2, dtype=torch.int32).to(torch.uint8)  # (n_blocks, 4)


def pack(c: Codes, btype: BlockType | str) -> torch.Tensor:
    """Block bytes (n_blocks, type_size) uint8 from (d, q, m); d and m are rounded to fp16."""
    lay = layout(btype)
    q = c.q.detach()
    if (q < lay.code_min).any() or (q > lay.code_max).any() or (q != torch.round(q)).any():
        raise ValueError(f"{BlockType(btype).value} codes must be integers in [{lay.code_min}, {lay.code_max}]")
    parts = [_fp16_bytes(c.d.detach())]
    if lay.affine:
        parts.append(_fp16_bytes(c.m.detach()))
    if lay.bits == 8:
        parts.append(q.to(torch.int8).view(torch.uint8))
    else:
        if lay.bits == 5:
            parts.append(_high_bits(q))
        parts.append(_nibbles(q))
    return torch.cat(parts, dim=1)


def unpack(data: torch.Tensor, btype: BlockType | str) -> Codes:
    """Inverse of pack: (fp16 d, codes, fp16 m) as float32."""
    lay = layout(btype)
    b = data.reshape(-1, lay.type_size)
    d = _fp16_from_bytes(b[:, :2])
    at, m = 2, None
    if lay.affine:
        m, at = _fp16_from_bytes(b[:, 2:4]), 4
    if lay.bits == 8:
        return Codes(d, b[:, at:].contiguous().view(torch.int8).to(torch.float32), m)
    high = torch.zeros(b.shape[0], 32, dtype=torch.uint8, device=b.device)
    if lay.bits == 5:
        qh = b[:, at:at + 4]  # (n_blocks, 4) -> bit k of byte j is code 8j + k
        shifts = torch.arange(8, dtype=torch.uint8, device=b.device)
        high = (((qh.unsqueeze(2) >> shifts) & 1) << 4).reshape(-1, 32)
        at += 4
    qs = b[:, at:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=1) | high  # (n_blocks, 32)
    return Codes(d, q.to(torch.float32), m)


# ---- whole tensors ---------------------------------------------------------------------------

# K-quants (compress/quant/kquants.py): (block size, type size) and (quantize, dequantize)
_K_LAYOUTS = {"Q4_K": kquants.Q4_K_LAYOUT, "Q6_K": kquants.Q6_K_LAYOUT}
_K_FUNCS = {"Q4_K": (kquants.quantize_q4_k, kquants.dequantize_q4_k),
            "Q6_K": (kquants.quantize_q6_k, kquants.dequantize_q6_k)}
PACKED_TYPES = tuple(t.value for t in BlockType) + tuple(_K_LAYOUTS)  # every type the GGUF writer packs


def quantize(x: torch.Tensor, btype: BlockType | str) -> torch.Tensor:
    """Quantize along the last dim into GGUF block bytes (uint8), same leading shape."""
    name = _name(btype)
    if name in _K_LAYOUTS:
        return _K_FUNCS[name][0](x)
    return pack(codes(x, name), name).reshape(*x.shape[:-1], -1)


def dequantize(data: torch.Tensor, btype: BlockType | str, shape: tuple[int, ...]) -> torch.Tensor:
    name = _name(btype)
    if name in _K_LAYOUTS:
        return _K_FUNCS[name][1](data, tuple(shape))
    return values(unpack(data, name), name).reshape(shape)


def fake_quantize(x: torch.Tensor, btype: BlockType | str) -> torch.Tensor:
    """dequantize(quantize(x)) in float32; the legacy formats skip building the bytes."""
    name = _name(btype)
    if name in _K_LAYOUTS:
        return dequantize(quantize(x, name), name, tuple(x.shape))
    return values(codes(x, name), name).reshape(x.shape)
