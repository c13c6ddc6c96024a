"""GGUF block formats in torch: quantize to the exact bytes llama.cpp stores, and back.

This module is the one numeric truth of slimkit: the GGUF writer packs blocks with it and
quantization-aware training will fake-quantize through it. Every function matches the
reference quantizer of ggml (ggml/src/ggml-quants.c) bit for bit: float32 arithmetic in the
same order, the same rounding, scales rounded to fp16 round-to-nearest-even like
GGML_FP32_TO_FP16. Tests compare the bytes with the `gguf` package's reference quantizers.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class BlockType(str, Enum):
    """Block formats implemented here (names as in gguf.GGMLQuantizationType)."""

    Q8_0 = "Q8_0"
    Q4_0 = "Q4_0"


@dataclass(frozen=True)
class BlockLayout:
    block_size: int  # weights per block (QK8_0 = QK4_0 = 32)
    type_size: int  # bytes per block: fp16 scale + packed quants


LAYOUTS: dict[BlockType, BlockLayout] = {
    BlockType.Q8_0: BlockLayout(block_size=32, type_size=2 + 32),  # block_q8_0 {ggml_half d; int8 qs[32]}
    BlockType.Q4_0: BlockLayout(block_size=32, type_size=2 + 16),  # block_q4_0 {ggml_half d; uint8 qs[16]}
}


def can_quantize(shape: tuple[int, ...] | torch.Size, btype: BlockType | str) -> bool:
    """Blocks run along the last (row) dimension; it must be a whole number of blocks."""
    return len(shape) >= 1 and shape[-1] % LAYOUTS[BlockType(btype)].block_size == 0


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


def _inverse(d: torch.Tensor) -> torch.Tensor:
    # `const float id = d ? 1.0f/d : 0.0f;`
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))


def _fp16_bytes(d: torch.Tensor) -> torch.Tensor:
    return d.to(torch.float16).view(torch.uint8).reshape(-1, 2)  # (n_blocks, 2), little-endian


def _fp16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).to(torch.float32)  # (n_blocks, 1)


# ---- Q8_0 -------------------------------------------------------------------------------

def q8_0_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scale d, int8 codes), as quantize_row_q8_0_ref.

    Returns the float32 scale d = amax/127 (before fp16 storage) and the codes round(x/d).
    """
    blocks = _blocks(x, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127  # amax / ((1 << 7) - 1)
    q = _roundf(blocks * _inverse(d))
    return d, q


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    """Bytes of block_q8_0 rows (quantize_row_q8_0_ref): shape (..., n/32*34) uint8."""
    d, q = q8_0_codes(x)
    out = torch.cat([_fp16_bytes(d), q.to(torch.int8).view(torch.uint8)], dim=1)
    return out.reshape(*x.shape[:-1], -1)


def dequantize_q8_0(data: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """dequantize_row_q8_0: y = d * q."""
    b = data.reshape(-1, LAYOUTS[BlockType.Q8_0].type_size)
    d = _fp16_from_bytes(b[:, :2])
    q = b[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    return (q * d).reshape(shape)


# ---- Q4_0 -------------------------------------------------------------------------------

def q4_0_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scale d, codes in 0..15), as quantize_row_q4_0_ref.

    d = max / -8 where max is the signed value of largest magnitude (first one on ties);
    q = min(15, (int8)(x/d + 8.5)), the cast truncating toward zero.
    """
    blocks = _blocks(x, 32)
    imax = blocks.abs().argmax(dim=1, keepdim=True)  # first index of the max, like the C loop's `>`
    vmax = torch.gather(blocks, 1, imax)
    d = vmax / -8
    q = torch.trunc(blocks * _inverse(d) + 8.5).clamp(0, 15)
    return d, q


def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    """Bytes of block_q4_0 rows: shape (..., n/32*18) uint8."""
    d, q = q4_0_codes(x)
    q = q.to(torch.uint8).reshape(-1, 2, 16)  # (n_blocks, 2 halves, 16)
    packed = q[:, 0, :] | (q[:, 1, :] << 4)  # qs[j] = x[j] | x[j+16] << 4
    out = torch.cat([_fp16_bytes(d), packed], dim=1)
    return out.reshape(*x.shape[:-1], -1)


def dequantize_q4_0(data: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """dequantize_row_q4_0: y[j] = (lo - 8) * d, y[j+16] = (hi - 8) * d."""
    b = data.reshape(-1, LAYOUTS[BlockType.Q4_0].type_size)
    d = _fp16_from_bytes(b[:, :2])
    qs = b[:, 2:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=1).to(torch.float32) - 8  # (n_blocks, 32)
    return (q * d).reshape(shape)


_QUANTIZE = {BlockType.Q8_0: quantize_q8_0, BlockType.Q4_0: quantize_q4_0}
_DEQUANTIZE = {BlockType.Q8_0: dequantize_q8_0, BlockType.Q4_0: dequantize_q4_0}


def quantize(x: torch.Tensor, btype: BlockType | str) -> torch.Tensor:
    """Quantize along the last dim into GGUF block bytes (uint8), same leading shape."""
    return _QUANTIZE[BlockType(btype)](x)


def dequantize(data: torch.Tensor, btype: BlockType | str, shape: tuple[int, ...]) -> torch.Tensor:
    return _DEQUANTIZE[BlockType(btype)](data, tuple(shape))


def fake_quantize(x: torch.Tensor, btype: BlockType | str) -> torch.Tensor:
    """dequantize(quantize(x)) in float32, without building the byte layout."""
    btype = BlockType(btype)
    d, q = (q8_0_codes if btype is BlockType.Q8_0 else q4_0_codes)(x)
    d16 = d.to(torch.float16).to(torch.float32)
    y = q * d16 if btype is BlockType.Q8_0 else (q - 8) * d16
    return y.reshape(x.shape)
