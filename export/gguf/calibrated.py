"""Calibrated GGUF export: an importance matrix and GPTQ inside llama.cpp's own type mixes.

The flow for `--method imatrix|gptq|gptq+imatrix` at any quantized --type:
  1. the model at F32 is quantized by llama.cpp's quantizer with the imatrix, which fixes every
     tensor's type exactly as llama-quantize would (its mix rules, shape fallbacks, and the rules that
     change when an imatrix is given, e.g. Q4_0's first ffn_down layers at Q4_1);
  2. slimkit quantizes each tensor whose type it packs (compress.quant.calibrated: ggml's weighted
     quantizers for `imatrix`, GPTQ for the others) into exact blocks of that type;
  3. a GGUF holding those blocks (and F32 for the rest) goes through llama.cpp's quantizer once more
     with the same imatrix: it keeps tensors that already have their target type byte for byte and
     quantizes the others (Q5_K, Q3_K, Q2_K, IQ4_*: types slimkit does not pack) itself.
The result has exactly llama.cpp's tensor types (checked). When every quantized tensor in it is
slimkit's, validation compares llama.cpp with torch running those exact values (a gate that fails
on a wrong block); otherwise agreement and KL are reported, as for llama.cpp's own types.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from compress.calib import CalibStats
from compress.errors import SlimkitError
from compress.quant import formats
from compress.quant.calibrated import check_method, quantize_model
from compress.quant.plans import NEEDS_GRAM
from compress.quant.gptq import GPTQConfig
from export.gguf import arch as arch_registry
from export.gguf import imatrix as imx
from export.gguf import types as gtypes


@dataclass
class Calibration:
    """What a calibrated export is given: statistics from `compress.calib.collect` (any method),
    or an imatrix file's contents (method imatrix only)."""

    stats: CalibStats | None = None
    windows: Any = None  # the calibration token windows (N, seq_len): sequential GPTQ runs on them
    imatrix: imx.Imatrix | None = None
    imatrix_path: str = ""
    gptq: GPTQConfig = GPTQConfig()


def imatrix_names(ckpt: Any) -> dict[str, str]:
    """{HF weight name: GGUF name} of the weights an imatrix records (blk.* and an untied output)."""
    spec = arch_registry.get(ckpt.model.config)
    linear = {f"{n}.weight" for n, m in ckpt.model.named_modules() if type(m).__name__ == "Linear"}
    out = {}
    for hf_name, name, _ in spec.tensors(ckpt.model.state_dict()):
        if hf_name in linear and (name.startswith("blk.") or name == "output.weight"):
            out[hf_name] = name
    return out


def imatrix_for(ckpt: Any, cal: Calibration, dataset: str = "", chunk_size: int = 512) -> imx.Imatrix:
    """The imatrix of the calibration (checked against the model's weights and widths)."""
    names = imatrix_names(ckpt)
    if cal.imatrix is not None:
        im = cal.imatrix
    elif cal.stats is not None:
        im = imx.from_stats(cal.stats, names, [dataset or cal.stats.source], chunk_size)
    else:
        raise SlimkitError("a calibrated export needs --calib FILE or --imatrix FILE")
    state = ckpt.model.state_dict()
    im.check({names[hf]: int(state[hf].shape[1]) for hf in names}, cal.imatrix_path or "the imatrix")
    return im


def _tensor_types(path: Path) -> dict[str, str]:
    r = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in r.tensors}


def export_calibrated(ckpt: Any, tmp: Path, etype: gtypes.ExportType, method: str, cal: Calibration,
                      threads: int | None = None) -> tuple[Any, dict[str, int], bool]:
    """Write the calibrated file at `tmp`. Returns (the checkpoint whose weights are the file's values
    where slimkit quantized, counts per type, whether every quantized tensor is slimkit's)."""
    from export.gguf.quantize import llama_quantize
    from export.gguf.writer import write_native

    if etype.is_float:
        raise SlimkitError(f"--method {method} calibrates quantized types; {etype.name} is a float type")
    im = imatrix_for(ckpt, cal)
    stats = cal.stats if cal.stats is not None else _stats_from_imatrix(ckpt, im)
    sequential = method in NEEDS_GRAM and cal.gptq.sequential
    if sequential and cal.windows is None:
        raise SlimkitError(f"--method {method} needs the calibration windows (--calib FILE)")
    if not sequential:
        check_method(method, stats)
    values = {name: im.values(name) for name in im.sums}
    spec = arch_registry.get(ckpt.model.config)
    f32 = gtypes.parse("F32")
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".calibrated.") as work:
        work = Path(work)
        write_native(ckpt, work / "f32.gguf", f32)
        llama_quantize(work / "f32.gguf", work / "ref.gguf", etype, threads, imatrix=values)
        ref_types = _tensor_types(work / "ref.gguf")
        hf_types = {}
        for hf_name, name, tensor in spec.tensors(ckpt.model.state_dict()):
            if ref_types.get(name) in formats.PACKED_TYPES and tensor.dim() == 2:
                hf_types[hf_name] = ref_types[name]
        if method in NEEDS_GRAM and not any(h.startswith("model.layers.") for h in hf_types):
            raise SlimkitError(f"--method {method} does not apply to {etype.name}: none of its tensor types is one "
                               f"slimkit packs ({', '.join(formats.PACKED_TYPES)}); use --method imatrix")
        out = copy.copy(ckpt)
        out.model = copy.deepcopy(ckpt.model)
        if sequential:
            from compress.quant.sequential import sequential_quantize

            quant = sequential_quantize(out.model, cal.windows, hf_types, method, cal.gptq)
        else:
            quant = quantize_model(out.model, hf_types, stats, method, cal.gptq)
        write_native(out, work / "mixed.gguf", f32, quant=quant)
        llama_quantize(work / "mixed.gguf", tmp, etype, threads, imatrix=values, allow_requantize=True)
    got = _tensor_types(tmp)
    if got != ref_types:
        bad = next(n for n in ref_types if got.get(n) != ref_types[n])
        raise SlimkitError(f"internal error: {bad} came out as {got.get(bad)} instead of llama.cpp's "
                           f"{ref_types[bad]}; please report it")
    counts: dict[str, int] = {}
    for t in got.values():
        counts[t] = counts.get(t, 0) + 1
    ours = {spec.gguf_name(h) for h in hf_types}
    all_ours = all(t in ("F32", "F16") or n in ours for n, t in got.items())
    return out, counts, all_ours


def _stats_from_imatrix(ckpt: Any, im: imx.Imatrix) -> CalibStats:
    """CalibStats (HF module names) from an imatrix file: per-column sums and counts, no Gram."""
    import torch

    stats = CalibStats(source=", ".join(im.datasets))
    for hf_name, name in imatrix_names(ckpt).items():
        module = hf_name.removesuffix(".weight")
        stats.sum_sq[module] = torch.from_numpy(np.asarray(im.values(name), dtype=np.float64))
        stats.count[module] = 1
    return stats
