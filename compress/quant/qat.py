"""Quantization-aware training through the exact GGUF block numerics of compress.quant.formats.

prepare_qat(model, plan) puts a FakeQuant parametrization (torch.nn.utils.parametrize) on every
Linear and Embedding weight the plan quantizes: the forward pass sees exactly the values llama.cpp
will dequantize, the backward pass is straight-through. With `learn_scales` the block scales (and
mins) are parameters trained LSQ-style; they are kept fp16-representable and the codes inside
the format's range, so any learned block is a valid GGUF block. convert_qat(model) removes the
parametrizations, writes the fake-quantized values into the weights and returns the packed
blocks, which the GGUF writer stores as they are: the file reproduces the trained numerics
without rounding them a second time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.checkpoint import BLOCKS_FILE
from compress.errors import SlimkitError
from compress.quant import formats
from compress.quant.plans import LEARNABLE, QATPlan

__all__ = ["FakeQuant", "QATPlan", "QuantizedWeights", "convert_qat", "is_prepared", "prepare_qat"]

def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return formats.straight_through(x, torch.round)


class FakeQuant(nn.Module):
    """weight -> the values its GGUF blocks dequantize to; straight-through gradients.

    Learned scales: the codes come from ggml's own code formula (formats.code_values) with the
    learned float32 d (and m), the values from their fp16 rounding, exactly as llama.cpp's
    reference quantizer does it; the gradients are LSQ's (w passes inside the range, d gets
    q - w/d inside and the code at the clamp). Initialised with the reference scales, so step 0
    is exactly llama.cpp's quantization.
    """

    def __init__(self, qtype: str, weight: torch.Tensor | None = None, learn_scales: bool = False,
                 init: torch.Tensor | None = None) -> None:
        super().__init__()
        # own scales: learned (LSQ), or fixed at those of `init` (blocks of a calibrated quantizer, e.g.
        # GPTQ), so that step 0 is exactly those blocks; otherwise the reference choice at every step
        self.qtype, self.learned = qtype, learn_scales or init is not None
        if self.learned:
            if qtype not in LEARNABLE or weight is None:
                raise SlimkitError(f"learned or calibrated scales are not available for {qtype}")
            c = formats.unpack(init, qtype) if init is not None else formats.codes(weight.detach(), qtype)
            rows = weight.shape[0]
            d = c.d.reshape(rows, -1).clone()  # float32, as the reference computes codes
            m = c.m.reshape(rows, -1).clone() if c.m is not None else None
            if learn_scales:
                self.scale = nn.Parameter(d)
                self.min = nn.Parameter(m) if m is not None else None
            else:
                self.register_buffer("scale", d)
                self.register_buffer("min", m)

    def codes(self, w: torch.Tensor) -> formats.Codes:
        """The blocks of w: llama.cpp's reference choice, or its code formula with the learned
        (float32) scale and min, differentiable in w, d and m."""
        if not self.learned:
            return formats.codes(w, self.qtype)
        blocks = w.reshape(-1, formats.block_size(self.qtype))  # (n_blocks, block_size)
        d = self.scale.reshape(-1, 1)
        m = self.min.reshape(-1, 1) if self.min is not None else None
        return formats.Codes(d, formats.code_values(blocks, self.qtype, d, m), m)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.qtype == "F32":
            return w
        if self.qtype == "F16":
            return formats.fp16_round(w)
        if self.learned:
            return formats.values(self.codes(w), self.qtype).reshape(w.shape)
        return formats.straight_through(w, lambda t: formats.fake_quantize(t, self.qtype))

    def pack(self, w: torch.Tensor) -> torch.Tensor:
        """The GGUF bytes of w, (rows, row_bytes) uint8, whose dequantization is forward(w)."""
        with torch.no_grad():
            if not self.learned:
                return formats.quantize(w, self.qtype)
            return formats.pack(self.codes(w), self.qtype).reshape(w.shape[0], -1)

    def extra_repr(self) -> str:
        return f"{self.qtype}{', learned scales' if self.learned else ''}"


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.dim() == 2]


def prepare_qat(model: nn.Module, plan: QATPlan, init: "QuantizedWeights | None" = None) -> dict[str, str]:
    """Fake-quantize the model's weights in place; returns {weight name: type}.

    Tied weights (embedding = output) share one FakeQuant, so they train and export as one tensor.
    `init`: blocks of a calibrated quantizer (compress.quant.calibrated) whose values the weights
    already hold; their scales are kept, so the first forward pass is exactly those blocks.
    """
    if is_prepared(model):
        raise SlimkitError("the model is already prepared for QAT")
    shared: dict[int, FakeQuant] = {}
    types: dict[str, str] = {}
    for name, module in _targets(model):
        qtype = plan.type_for(name, tuple(module.weight.shape))
        types[f"{name}.weight"] = qtype
        if qtype == "F32":
            continue
        key = id(module.weight)
        blocks = init.blocks.get(f"{name}.weight") if init is not None else None
        fq = shared.get(key) or FakeQuant(qtype, module.weight, plan.learn_scales and qtype in LEARNABLE,
                                          blocks if qtype in LEARNABLE else None)
        if key in shared and fq.qtype != qtype:
            raise SlimkitError(f"{name}.weight is tied to a weight planned as {fq.qtype}, not {qtype}; "
                               "give tied weights the same type")
        shared[key] = fq
        parametrize.register_parametrization(module, "weight", fq)
    model._slimkit_qat_plan = plan  # noqa: SLF001 (read back by convert_qat and the trainer)
    return types


def is_prepared(model: nn.Module) -> bool:
    return any(isinstance(p, FakeQuant) for m in model.modules() if parametrize.is_parametrized(m, "weight")
               for p in m.parametrizations.weight)


@dataclass
class QuantizedWeights:
    """What convert_qat hands the GGUF writer: every planned weight's type, and the packed
    blocks of the block-quantized ones ({name: (rows, row_bytes) uint8})."""

    types: dict[str, str]
    blocks: dict[str, torch.Tensor] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.blocks.items()}, directory / BLOCKS_FILE,
                  metadata={"types": json.dumps(self.types), "plan": json.dumps(self.plan)})

    @classmethod
    def load(cls, directory: Path) -> "QuantizedWeights | None":
        path = directory / BLOCKS_FILE
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            blocks = {k: f.get_tensor(k) for k in f.keys()}
        return cls(json.loads(meta.get("types", "{}")), blocks, json.loads(meta.get("plan", "{}")))


@torch.no_grad()
def convert_qat(model: nn.Module) -> QuantizedWeights:
    """Remove the fake-quant parametrizations: weights become the exact dequantized values and
    the packed blocks are returned for the GGUF writer."""
    plan: QATPlan | None = getattr(model, "_slimkit_qat_plan", None)
    if plan is None:
        raise SlimkitError("the model was not prepared with prepare_qat")
    result = QuantizedWeights({}, {}, plan.to_dict())
    pending: list[tuple[str, nn.Module, torch.Tensor]] = []
    for name, module in _targets(model):
        if not parametrize.is_parametrized(module, "weight"):
            result.types[f"{name}.weight"] = "F32"
            continue
        fq = module.parametrizations.weight[0]
        latent = module.parametrizations.weight.original
        result.types[f"{name}.weight"] = fq.qtype
        if fq.qtype in formats.PACKED_TYPES:
            result.blocks[f"{name}.weight"] = fq.pack(latent)
        pending.append((name, module, fq(latent).detach().clone()))
    for _, module, _ in pending:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    for _, module, value in pending:
        module.weight.copy_(value)  # tied modules write the same values into their shared weight
    del model._slimkit_qat_plan
    return result
