"""Calibrated post-training quantization of a whole model into exact GGUF blocks.

`quantize_model(model, types, stats, method)` turns every weight whose planned type slimkit packs
into blocks of that type and writes the dequantized values into the model, returning the blocks
(compress.quant.qat.QuantizedWeights, the object QAT checkpoints carry, so the GGUF writer stores
them as they are and QAD can start from them). Methods:
  rtn           ggml's reference quantizers (quantize_row_*_ref): what `--type` does without calibration
  imatrix       ggml's importance-weighted quantizers with the imatrix of the calibration text
                (byte-identical to llama.cpp's quantizer given the same imatrix)
  gptq          GPTQ error feedback (compress.quant.gptq) with the reference scale search per block
  gptq+imatrix  GPTQ with the importance-weighted scale search per block
Weights without calibration statistics (a tied token embedding, which llama-imatrix does not
record either) fall back to the reference quantizer for rtn/gptq and to ggml's weighted quantizer
without importance (= reference) otherwise.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from compress.calib import CalibStats
from compress.errors import SlimkitError
from compress.quant import formats, gptq, weighted
from compress.quant.plans import METHODS, NEEDS_GRAM
from compress.quant.qat import QuantizedWeights



def check_method(method: str, stats: CalibStats | None) -> None:
    if method not in METHODS:
        raise SlimkitError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "rtn" and stats is None:
        raise SlimkitError(f"--method {method} needs calibration statistics: give --calib FILE (or --imatrix "
                           "FILE for the imatrix method)")
    if method in NEEDS_GRAM and stats is not None and not stats.gram:
        raise SlimkitError(f"--method {method} needs Gram matrices, which an imatrix file does not hold: "
                           "give --calib FILE")


def _weights(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """{weight name: (module name, module)} for Linear and Embedding weights, one entry per tensor
    object first seen (a tied lm_head after the embedding is listed separately, see _tied)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.dim() == 2:
            out[f"{name}.weight" if name else "weight"] = (name, m)
    return out


def _groups(names: list[str], modules: dict[str, tuple[str, nn.Module]], types: dict[str, str],
            stats: CalibStats) -> list[list[str]]:
    """Weights swept together by GPTQ: same Gram matrix object and same type (q/k/v, gate/up)."""
    groups: dict[tuple[int, str], list[str]] = {}
    for n in names:
        key = (id(stats.gram[modules[n][0]]), types[n])
        groups.setdefault(key, []).append(n)
    return list(groups.values())


def quantize_model(model: nn.Module, types: dict[str, str], stats: CalibStats | None, method: str,
                   cfg: gptq.GPTQConfig = gptq.GPTQConfig(),
                   progress: Callable[[str], None] | None = None) -> QuantizedWeights:
    """Quantize the weights named in `types` ({weight name: GGUF type}) in place; returns their blocks.

    Float types (F32/F16) in `types` are only recorded; F16 weights are rounded to fp16."""
    check_method(method, stats)
    modules = _weights(model)
    unknown = [n for n in types if n not in modules]
    if unknown:
        raise SlimkitError(f"the model has no Linear/Embedding weight {unknown[0]}")
    result = QuantizedWeights(dict(types), {}, {"method": method})
    done: dict[int, str] = {}  # id(weight tensor) -> name already quantized (tied weights)
    alias: dict[str, str] = {}
    embeddings = {id(m.weight) for _, m in modules.values() if isinstance(m, nn.Embedding)}
    pending_gptq = []
    for name, qtype in types.items():
        module_name, module = modules[name]
        w = module.weight
        if id(w) in done:
            first = done[id(w)]
            if types[first] != qtype:
                raise SlimkitError(f"{name} is tied to {first} but planned as {qtype}, not {types[first]}")
            alias[name] = first
            continue
        done[id(w)] = name
        if qtype not in formats.PACKED_TYPES:
            if qtype == "F16":
                with torch.no_grad():
                    w.copy_(w.half().float())
            continue
        # a head tied to the embedding is quantized as the embedding (no statistics: the lookup uses it too)
        has_stats = (stats is not None and module_name in stats.sum_sq and isinstance(module, nn.Linear)
                     and id(w) not in embeddings)
        if method in NEEDS_GRAM and has_stats and module_name in stats.gram:
            pending_gptq.append(name)
            continue
        imp = stats.importance(module_name) if (has_stats and method == "imatrix") else None
        blocks = weighted.quantize(w.detach().to(torch.float32), qtype, imp)
        _store(result, name, w, blocks, qtype)
    if pending_gptq:
        gcfg = gptq.GPTQConfig(cfg.damp, method == "gptq+imatrix", cfg.batch, cfg.sequential)
        for group in _groups(pending_gptq, modules, types, stats):
            if progress:
                progress(f"GPTQ {', '.join(group)}")
            ws = [modules[n][1].weight for n in group]
            h = stats.hessian(modules[group[0]][0])
            blocks, _ = gptq.gptq_quantize(torch.cat([w.detach().float() for w in ws]), h, types[group[0]], gcfg)
            at = 0
            for n, w in zip(group, ws):
                _store(result, n, w, blocks[at:at + w.shape[0]].contiguous(), types[n])
                at += w.shape[0]
    for name, first in alias.items():
        if first in result.blocks:
            result.blocks[name] = result.blocks[first].clone()  # its own tensor: safetensors refuses shared memory
    return result


def _store(result: QuantizedWeights, name: str, w: torch.Tensor, blocks: torch.Tensor, qtype: str) -> None:
    result.blocks[name] = blocks
    with torch.no_grad():
        w.copy_(formats.dequantize(blocks, qtype, tuple(w.shape)).to(w.dtype))


def calibrated_init(model: nn.Module, tokenizer, plan) -> QuantizedWeights:
    """QAT step 0 from a post-training method (`plan.init` on `plan.calib` text, a
    compress.quant.plans.QATPlan): the model's weights become the blocks' values, which are returned
    for prepare_qat(model, plan, init=...) to keep their scales."""
    from compress.calib import calibration_windows, collect

    windows, source = calibration_windows(model, tokenizer, list(plan.calib), plan.calib_tokens, plan.calib_seq_len)
    types = {wname: plan.type_for(mname, tuple(m.weight.shape)) for wname, (mname, m) in _weights(model).items()}
    cfg = gptq.GPTQConfig(plan.damp, sequential=plan.sequential)
    if plan.init in NEEDS_GRAM and cfg.sequential:
        from compress.quant.sequential import sequential_quantize

        return sequential_quantize(model, windows, types, plan.init, cfg)
    stats = collect(model, windows, gram=plan.init in NEEDS_GRAM, source=source)
    return quantize_model(model, types, stats, plan.init, cfg)
