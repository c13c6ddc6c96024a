"""llama.cpp's own quantizer (llama_model_quantize via llama-cpp-python) for K-quants and friends."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

from compress.errors import SlimkitError
from export.gguf.types import ExportType


def llama_quantize(src: Path, dst: Path, etype: ExportType, threads: int | None = None) -> None:
    try:
        import llama_cpp
    except ImportError:
        raise SlimkitError(f"--type {etype.name} needs llama.cpp's quantizer: pip install 'slimkit[llama]'") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(etype.file_type)
    params.nthread = threads or os.cpu_count() or 1
    from export.runtime import quiet_stderr

    with quiet_stderr():  # one line per tensor otherwise; SLIMKIT_LLAMA_LOG=1 shows it
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SlimkitError(f"llama.cpp could not quantize to {etype.name} (return code {rc}); "
                           "rerun with SLIMKIT_LLAMA_LOG=1 to see llama.cpp's log")
