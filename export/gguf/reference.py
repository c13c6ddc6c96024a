"""A torch model that computes what a GGUF file holds, the way ggml's CPU matmuls compute it.

validate.py compares llama.cpp's logits with this model's: any difference beyond summation order
is llama.cpp running something other than the file's values (wrong metadata, layout, a type
misread), for every tensor type, whoever quantized it. export.gguf.blockcheck checks the other
half: that the file's values are the model's weights.

The weights: every quantized or half-precision tensor of the file, dequantized by the gguf package
(gguf.quants.dequantize) and moved back to HF layout by inverting the family's row permutation
(export.gguf.arch transform()); F32 tensors (norms, biases) are the model's own, which the block
check has already found equal to the file's.

The activations (ggml-cpu's type_traits[type].vec_dot_type): before a matmul with a quantized
weight, ggml quantizes the activations, and the torch reference rounds them the same way:
  Q8_0 blocks of 32 (d = amax / 127, fp16)   for Q8_0, Q4_0, Q5_0, IQ4_NL weights
  Q8_1 (Q8_0's values plus s = d * sum(q) in fp16, which meets the weight's mins)   for Q4_1, Q5_1
  Q8_K blocks of 256 (d = max / -127, float32: quantize_row_q8_K_ref)   for Q2_K..Q6_K, IQ4_XS, TQ*
  F16 / BF16   for F16 / BF16 weights.
What is left is summation order; in deep models with large activations the rounding of one
activation to a neighbouring level can still differ and grow through the layers (measured in
benchmarks/results/validation.json).
"""
from __future__ import annotations

import copy
import functools
import os

import numpy as np
import torch

from compress.errors import SlimkitError
from compress.quant import formats

Q8_0_INPUT = ("Q8_0", "Q4_0", "Q5_0", "IQ4_NL")
Q8_1_INPUT = ("Q4_1", "Q5_1")
Q8_K_INPUT = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "TQ1_0", "TQ2_0")
Q8_K_BLOCK = 256


def q8_k_values(flat: torch.Tensor) -> torch.Tensor:
    """quantize_row_q8_K_ref then dequantize: per 256 values, iscale = -127 / max (max: the value
    of largest magnitude, sign kept), q = min(127, nearest_int(iscale * x)), value = q / iscale."""
    b = flat.reshape(-1, Q8_K_BLOCK).float()
    mx = torch.gather(b, 1, b.abs().argmax(1, keepdim=True))
    zero = mx == 0
    iscale = torch.div(torch.full_like(mx, -127.0), torch.where(zero, torch.ones_like(mx), mx))
    q = torch.clamp(torch.round(b * iscale), max=127.0)   # nearest_int rounds half to even, as torch.round
    d = torch.div(torch.ones_like(iscale), iscale)
    return torch.where(zero, torch.zeros_like(b), q * d).reshape(flat.shape)


def _round_input(kind: str):
    def hook(module, args):
        x = args[0]
        if kind in ("F16", "BF16"):
            return (x.to(torch.float16 if kind == "F16" else torch.bfloat16).to(x.dtype), *args[1:])
        size = Q8_K_BLOCK if kind == "Q8_K" else formats.block_size("Q8_0")
        if x.shape[-1] % size:
            return None
        flat = x.reshape(-1, x.shape[-1]).float()
        out = q8_k_values(flat) if kind == "Q8_K" else formats.fake_quantize(flat, "Q8_0")
        return (out.reshape(x.shape).to(x.dtype), *args[1:])
    return hook


def _block_mins(spec, hf_name: str, t) -> torch.Tensor:
    """The fp16 min m of every block of a Q4_1 / Q5_1 tensor, read from its bytes (block_q4_1 and
    block_q5_1 both begin with d, m as fp16), in HF row order: (out, in / 32)."""
    import gguf

    nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.tensor_type)][1]
    raw = np.ascontiguousarray(t.data).reshape(t.data.shape[0], -1, nbytes)
    m = torch.from_numpy(raw[:, :, 2:4].copy().view(np.float16).astype(np.float32)[..., 0])
    return _to_hf(spec, hf_name, m)


def _affine_forward(module: torch.nn.Linear, mins: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A Q4_1 / Q5_1 weight against Q8_1 activations, as ggml_vec_dot_q4_1_q8_1 sums it:
    per block d_w d_a sum(q_w q_a) + m_w s_a, with s_a = fp16(d_a * sum(q_a))."""
    flat = x.reshape(-1, x.shape[-1]).float()
    c = formats.codes(flat, "Q8_0")   # Q8_1's d and q are Q8_0's
    xq = (c.q * formats.fp16_round(c.d)).reshape(flat.shape)
    s = formats.fp16_round(c.d * c.q.sum(-1, keepdim=True)).reshape(flat.shape[0], -1)   # (N, in / 32)
    scaled = module.weight - mins.repeat_interleave(formats.block_size("Q8_0"), dim=1)
    y = xq @ scaled.T + s @ mins.T
    if module.bias is not None:
        y = y + module.bias
    return y.reshape(*x.shape[:-1], -1).to(x.dtype)


def _to_hf(spec, hf_name: str, stored: torch.Tensor) -> torch.Tensor:
    """The file's tensor in HF layout: the family's transform of a quantized weight is a row
    permutation (RoPE pairs) or nothing; find it by transforming the row indices, invert it, and
    check that transforming back gives the file's tensor exactly."""
    rows = torch.arange(stored.shape[0], dtype=torch.float32).reshape(-1, *([1] * (stored.dim() - 1)))
    order = spec.transform(hf_name, rows.expand(stored.shape).contiguous()).reshape(stored.shape[0], -1)[:, 0]
    hf = torch.empty_like(stored)
    hf[order.long()] = stored
    if not torch.equal(spec.transform(hf_name, hf), stored):
        raise SlimkitError(f"validation cannot map {hf_name} back from its GGUF layout; please report it")
    return hf


def file_reference(path: str | os.PathLike, ckpt) -> torch.nn.Module:
    """A copy of ckpt's model holding the file's values, with ggml's activation rounding."""
    import gguf

    from export.gguf import arch as arch_registry

    spec = arch_registry.get(ckpt.model.config)
    model = copy.deepcopy(ckpt.model)
    params = dict(model.named_parameters())
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    types: dict[int, str] = {}
    mins: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for hf_name, name, _ in spec.tensors(model.state_dict()):
            t = stored.get(name)
            if t is None or hf_name not in params:
                continue   # missing tensors fail the block check; rope_freqs etc. are not parameters
            qtype = gguf.GGMLQuantizationType(t.tensor_type)
            if qtype is gguf.GGMLQuantizationType.F32:
                continue
            p = params[hf_name]
            values = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, qtype))).reshape(p.shape)
            p.copy_(_to_hf(spec, hf_name, values.float()))
            types[id(p)] = qtype.name
            if qtype.name in Q8_1_INPUT:
                mins[id(p)] = _block_mins(spec, hf_name, t)
    for module in model.modules():
        wtype = types.get(id(module.weight)) if isinstance(module, torch.nn.Linear) else None
        if wtype in Q8_1_INPUT and module.in_features % formats.block_size("Q8_0") == 0:
            module.forward = functools.partial(_affine_forward, module, mins[id(module.weight)])
        elif wtype in Q8_0_INPUT:
            module.register_forward_pre_hook(_round_input("Q8_0"))
        elif wtype in Q8_K_INPUT:
            module.register_forward_pre_hook(_round_input("Q8_K"))
        elif wtype in ("F16", "BF16"):
            module.register_forward_pre_hook(_round_input(wtype))
    return model
