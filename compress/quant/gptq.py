"""GPTQ / OPTQ error feedback into exact GGUF blocks.

For a weight W (out x in) and the mean Gram matrix H = X^T X / n of its calibration inputs
(compress.calib), GPTQ quantizes the input columns one at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian, so that
||(W - W_q) X|| is minimised greedily (Frantar et al. 2022, "OPTQ"). The choices made here:

- damping: H + lambda I with lambda = damp * mean(diag H). GPTQ's default 0.01 assumes calibration
  text like the eval text; ours rarely is (the benchmark calibrates on TinyStories + Shakespeare and
  is judged on WikiText). Measured on SmolLM2-135M Q4_0 (8192 calibration tokens, error
  ||(W - W_q) X|| on WikiText activations, 5 layers): damp 0.01 is worse than llama.cpp's
  imatrix quantizer on 3 of 5 layers (it fits the calibration text), damp 1.0 is 6-41% better on 4
  of 5 and 2% worse on one; 3 and 10 drift back towards the imatrix result. Default 1.0. Columns no
  calibration token touched (diag 0) get H_jj = 1 and weight 0, as in the reference code;
- the inverse comes from a Cholesky factorisation in float64 (upper factor of H^-1), the sweep
  runs in float32 with lazy batched updates (`batch` columns at a time, a multiple of the block);
- block order, no act-order: GGUF blocks are contiguous runs of 32 (256 for K-quants) input
  columns sharing one scale. The scale (and min, and K-quant sub-scales) of a block is chosen when
  the sweep reaches its first column, from the columns as updated so far, with llama.cpp's own
  weighted search (compress.quant.weighted.choose, importance = diag H of those columns, or the
  reference search for plain `gptq`), then every column of the block is rounded to the nearest
  code of that fixed grid. Act-order would visit a block's columns out of order, after some of its
  scale was already implied by others: the block would have to be fixed before its columns are
  reached (static groups), which loses most of act-order's gain and complicates the sweep.
- every block is a valid block of the target type: `weighted.pack` writes the chosen scales and
  the GPTQ codes, so the GGUF stores exactly what was optimised.
Linears that read the same input (q/k/v, gate/up) share H and are swept as one matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.errors import SlimkitError
from compress.quant import formats, weighted

DEFAULT_DAMP = 1.0  # see the module docstring


@dataclass(frozen=True)
class GPTQConfig:
    damp: float = DEFAULT_DAMP  # relative dampening of the Hessian diagonal
    weighted_scales: bool = True  # choose block scales with the imatrix-weighted search (gptq+imatrix)
    batch: int = 128  # lazy-update width in columns (rounded up to a multiple of the block)
    sequential: bool = True  # calibrate each block on the quantized blocks before it (compress.quant.sequential)

    def __post_init__(self) -> None:
        if not 0 <= self.damp <= 100:
            raise SlimkitError(f"GPTQ damping {self.damp} must be in [0, 100] (a fraction of the mean Hessian diagonal)")
        if self.batch < 1:
            raise SlimkitError("GPTQ batch must be a positive number of columns")


def inverse_factor(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of (H + lambda I)^-1 as float32, mask of dead columns)."""
    h = h.to(torch.float64).clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    diag = torch.diagonal(h)
    lam = damp * diag.mean()
    for attempt in range(6):  # a singular H (collinear inputs): more damping until it factors
        try:
            low = torch.linalg.cholesky(h + (lam * 10 ** attempt) * torch.eye(h.shape[0], dtype=h.dtype))
            hinv = torch.cholesky_inverse(low)
            return torch.linalg.cholesky(hinv, upper=True).to(torch.float32), dead
        except torch.linalg.LinAlgError:
            continue
    raise SlimkitError("the calibration Hessian is not positive definite even after damping; "
                       "give more calibration tokens")


def _nearest_codes(w: torch.Tensor, g: weighted.Group, col: int) -> torch.Tensor:
    """The code of each row nearest to column w (rows,) on block g's fixed grid (column `col` of the block)."""
    sub = col // g.sub
    scale, offset = g.scale[:, sub], g.offset[:, sub]
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round((w - offset) / safe).clamp(g.qmin, g.qmax)
    return torch.where(scale == 0, g.q[:, col], q)


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, qtype: str, cfg: GPTQConfig = GPTQConfig()
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ-quantize w (out, in) with mean Gram h (in, in) into qtype blocks.

    Returns (block bytes (out, row_bytes) uint8, the dequantized weight (out, in) float32)."""
    rows, cols = w.shape
    bs = formats.block_size(qtype)
    if cols % bs:
        raise SlimkitError(f"{qtype} needs rows of whole {bs}-blocks; this weight has {cols} columns")
    if h.shape != (cols, cols):
        raise SlimkitError(f"Gram matrix {tuple(h.shape)} does not match a weight with {cols} columns")
    importance = torch.diagonal(h).to(torch.float32).clamp_min(0) if cfg.weighted_scales else None
    sigma2 = weighted.row_sigma2(w.to(torch.float32))  # ggml's per-row sigma2, from the original row
    hinv, dead = inverse_factor(h, cfg.damp)
    work = w.detach().to(torch.float32).clone()
    work[:, dead] = 0
    codes = torch.zeros_like(work)
    groups: list[weighted.Group] = []
    batch = -(-max(cfg.batch, bs) // bs) * bs
    for i1 in range(0, cols, batch):
        i2 = min(i1 + batch, cols)
        w1 = work[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % bs == 0:
                imp = None if importance is None else importance[col:col + bs]
                groups.append(weighted.choose(w1[:, i:i + bs], qtype, imp, sigma2 if imp is not None else None))
            g = groups[-1]
            q = _nearest_codes(w1[:, i], g, col % bs)
            codes[:, col] = q
            sub = (col % bs) // g.sub
            wq = g.scale[:, sub] * q + g.offset[:, sub]
            e = (w1[:, i] - wq) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err1[:, i] = e
        work[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    blocks = torch.cat([weighted.pack(g, codes[:, k * bs:(k + 1) * bs]) for k, g in enumerate(groups)], dim=1)
    return blocks, formats.dequantize(blocks, qtype, (rows, cols))


def weighted_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W - W_hat) H (W - W_hat)^T) = ||(W - W_hat) X||^2 / n: the calibration-weighted error."""
    d = (w.to(torch.float64) - w_hat.to(torch.float64))
    return float(torch.einsum("ri,ij,rj->", d, h.to(torch.float64), d))
