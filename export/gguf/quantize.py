"""llama.cpp's own quantizer (llama_model_quantize via llama-cpp-python) for K-quants and friends.

An importance matrix reaches it the way llama-quantize passes one: `llama_model_quantize_params.imatrix`,
a null-terminated array of `llama_model_imatrix_data {name, data, size}` holding the mean x^2 per input
column (include/llama.h; read in src/llama-quant.cpp llama_model_quantize_impl). Per-tensor type rules
go through `tt_overrides` (`llama_model_tensor_override {pattern, type}`, regexes, null-terminated).
A source tensor that already has its target type is copied as it is (llama-quant.cpp: "If we've
decided to quantize to the same type the tensor is already in then there's nothing to do"): slimkit
relies on it to place its own optimized blocks inside llama.cpp's type mixes.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from compress.errors import SlimkitError
from export.gguf.types import ExportType


def _imatrix_array(llama_cpp, imatrix: dict[str, np.ndarray]):
    """(ctypes array, what must stay alive while llama.cpp reads it)."""
    keep: list[object] = []
    arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        data = np.ascontiguousarray(values, dtype=np.float32)
        raw = name.encode()
        keep += [data, raw]
        arr[i].name = raw
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    arr[len(imatrix)].name = None  # terminator: p->name == nullptr
    return arr, keep


def _override_array(llama_cpp, overrides: dict[str, str]):
    import gguf

    keep: list[object] = []
    arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
    for i, (pattern, qtype) in enumerate(overrides.items()):
        raw = pattern.encode()
        keep.append(raw)
        arr[i].pattern = raw
        arr[i].type = int(gguf.GGMLQuantizationType[qtype])
    arr[len(overrides)].pattern = None
    return arr, keep


# llama-quant.cpp refuses these without an imatrix for every tensor that keeps the low-bit type
# (Q2_K_S: all but token_embd; shape fallbacks of tiny models pass).
NEEDS_IMATRIX = ("Q2_K_S",)


def llama_quantize(src: Path, dst: Path, etype: ExportType, threads: int | None = None, *,
                   imatrix: dict[str, np.ndarray] | None = None, overrides: dict[str, str] | None = None,
                   allow_requantize: bool = False) -> None:
    """Quantize the GGUF `src` into `dst` at etype's llama.cpp file type.

    imatrix: {GGUF tensor name: mean x^2 per input column}; overrides: {regex: GGML type name};
    allow_requantize: the source holds tensors already quantized (slimkit's own blocks to keep)."""
    try:
        import llama_cpp
    except ImportError:
        raise SlimkitError(f"--type {etype.name} needs llama.cpp's quantizer: pip install 'slimkit[llama]'") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(etype.file_type)
    params.nthread = threads or os.cpu_count() or 1
    params.allow_requantize = allow_requantize
    keep: list[object] = []
    if imatrix:
        arr, alive = _imatrix_array(llama_cpp, imatrix)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep += [arr, *alive]
    if overrides:
        arr, alive = _override_array(llama_cpp, overrides)
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep += [arr, *alive]
    from export.runtime import quiet_stderr

    with quiet_stderr():  # one line per tensor otherwise; SLIMKIT_LLAMA_LOG=1 shows it
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    del keep
    if rc != 0 and not imatrix and etype.name in NEEDS_IMATRIX:
        raise SlimkitError(f"llama.cpp quantizes {etype.name} only with an importance matrix: add --method imatrix "
                           "--calib FILE (or --imatrix FILE)")
    if rc != 0:
        raise SlimkitError(f"llama.cpp could not quantize to {etype.name} (return code {rc}); "
                           "rerun with SLIMKIT_LLAMA_LOG=1 to see llama.cpp's log")
