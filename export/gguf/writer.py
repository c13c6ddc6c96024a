"""Write a loaded or saved checkpoint as GGUF, validated in llama.cpp by default.

slimkit writes F32/F16/BF16/Q8_0/Q4_0 itself with the gguf package (blocks packed by
compress.quant.formats); other types are an F32 file requantized by llama.cpp's own quantizer.
The artifact is built under a temporary name in the output directory and renamed into place only
after it was written (and validated), so a failure never leaves a partial file at OUT.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from compress.atomic import atomic_write
from compress.checkpoint import Checkpoint, load, load_weights_only
from compress.errors import SlimkitError
from export.gguf import arch as arch_registry
from export.gguf import types as gtypes
from export.gguf.encode import encode
from export.gguf.tokenizer import add_vocab


@dataclass
class ExportResult:
    path: Path
    type: str
    seconds: float
    file_mb: float
    validation: dict[str, Any] | None = None
    tensor_types: dict[str, int] = field(default_factory=dict)


def _vocab(ckpt: Checkpoint):
    if ckpt.gguf_vocab is not None:
        return ckpt.gguf_vocab
    from compress.gguf_tokenizer import vocab_from_tokenizer

    return vocab_from_tokenizer(ckpt.tokenizer)


def _add_general(w: gguf.GGUFWriter, ckpt: Checkpoint, etype: gtypes.ExportType) -> None:
    cfg = ckpt.model.config
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(str(getattr(cfg, "name_or_path", "") or "slimkit-model").split("/")[-1])
    w.add_file_type(int(etype.file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_string("general.quantized_by", "slimkit")
    w.add_string("general.slimkit.history", json.dumps(ckpt.history or {}, default=str, sort_keys=True))


def write_native(ckpt: Checkpoint, path: Path, etype: gtypes.ExportType) -> dict[str, int]:
    """Write the checkpoint at `etype` (F32/F16/BF16/Q8_0/Q4_0, or F32 for llama.cpp types)."""
    spec = arch_registry.get(ckpt.model.config)
    w = gguf.GGUFWriter(path, spec.arch_name)
    _add_general(w, ckpt, etype)
    spec.parameters(w)
    add_vocab(w, _vocab(ckpt))
    counts: dict[str, int] = {}
    for name, tensor in spec.tensors(ckpt.model.state_dict()):
        qtype = gtypes.tensor_type(name, tuple(tensor.shape), etype)
        data, raw_dtype = encode(tensor, qtype)
        w.add_tensor(name, data, raw_dtype=raw_dtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return counts


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def export_gguf(source: Checkpoint | str | os.PathLike, out: str | os.PathLike, type: str = "F16", *,
                validate: bool = True, validation_text: str | None = None) -> ExportResult:
    """Export SOURCE (checkpoint object, HF dir, .gguf or zoo name) to OUT at TYPE."""
    etype = gtypes.parse(type)
    out = Path(out)
    if out.is_dir():
        raise SlimkitError(f"{out} is a directory; give the output file name, e.g. {out}/model.gguf")
    if not out.parent.is_dir():
        raise SlimkitError(f"output directory {out.parent} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise SlimkitError(f"output directory {out.parent} is not writable; choose another -o path")
    if isinstance(source, Checkpoint):
        ckpt = source
    else:
        ckpt = load(source) if validate else load_weights_only(source)
    arch_registry.get(ckpt.model.config)  # unsupported architecture: fail before writing anything
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    intermediate = tmp.with_suffix(".f32.partial")
    try:
        if etype.native:
            counts = write_native(ckpt, tmp, etype)
        else:
            from export.gguf.quantize import llama_quantize

            write_native(ckpt, intermediate, etype)
            llama_quantize(intermediate, tmp, etype)
            counts = {}
        seconds = time.perf_counter() - start
        _fsync(tmp)
        report = None
        if validate:
            from export.validate import validate_gguf

            report = validate_gguf(tmp, ckpt, etype.name, text=validation_text)
            report_path = out.with_name(out.name + ".validation.json")
            atomic_write(report_path, json.dumps(report, indent=2).encode())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        intermediate.unlink(missing_ok=True)
    return ExportResult(out, etype.name, seconds, out.stat().st_size / 1e6, report, counts)
