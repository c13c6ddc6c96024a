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
import torch

from compress.atomic import atomic_write
from compress.checkpoint import Checkpoint, load, load_weights_only
from compress.errors import SlimkitError
from compress.quant import formats
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
    trained: bool = False  # written with a QAT checkpoint's trained blocks


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


def _trained(spec: Any, hf_name: str, tensor: torch.Tensor, quant: Any) -> tuple[gtypes.Q, Any, Any]:
    """A QAT weight as it was trained: its packed blocks (through the family's row transform,
    which moves whole rows and so whole blocks), checked to dequantize to the weight exactly."""
    qtype = gtypes.Q[quant.types[hf_name]]
    if qtype.name not in formats.PACKED_TYPES:
        if qtype is gtypes.Q.F16 and not torch.equal(tensor, tensor.half().float()):
            raise SlimkitError(f"{hf_name} was trained as F16 but its weights are not fp16 values; the checkpoint "
                               "changed after QAT: export it with an explicit --type")
        return (qtype, *encode(tensor, qtype))
    blocks = spec.transform(hf_name, quant.blocks[hf_name])
    if not torch.equal(formats.dequantize(blocks, qtype.name, tuple(tensor.shape)), tensor):
        raise SlimkitError(f"{hf_name}: the weights no longer match their trained {qtype.name} blocks (the checkpoint "
                           "changed after QAT); export it with an explicit --type to requantize")
    return qtype, blocks.numpy(), qtype


def write_native(ckpt: Checkpoint, path: Path, etype: gtypes.ExportType, trained: bool = False,
                 quant: Any = None) -> dict[str, int]:
    """Write the checkpoint at `etype` (a type slimkit packs, or F32 for llama.cpp's quantizer);
    `trained`: a QAT checkpoint's weights go in with the types and blocks they trained in;
    `quant`: those blocks given explicitly (compress.quant.qat.QuantizedWeights, e.g. GPTQ's)."""
    spec = arch_registry.get(ckpt.model.config)
    w = gguf.GGUFWriter(path, spec.arch_name)
    _add_general(w, ckpt, etype)
    spec.parameters(w)
    add_vocab(w, _vocab(ckpt))
    counts: dict[str, int] = {}
    quant = quant if quant is not None else (ckpt.quant if trained else None)
    for hf_name, name, tensor in spec.tensors(ckpt.model.state_dict()):
        if quant is not None and hf_name in quant.types:
            qtype, data, raw_dtype = _trained(spec, hf_name, tensor, quant)
        else:
            qtype = gtypes.tensor_type(name, tuple(tensor.shape), etype)
            data, raw_dtype = encode(tensor, qtype)
        w.add_tensor(name, data, raw_dtype=raw_dtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    finish(w)
    return counts


def finish(w: gguf.GGUFWriter) -> None:
    """Write header, metadata and tensors of a prepared GGUFWriter, and close it."""
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def export_gguf(source: Checkpoint | str | os.PathLike, out: str | os.PathLike, type: str | None = None, *,
                validate: bool = True, validation_text: str | None = None, method: str = "rtn",
                calibration: Any = None) -> ExportResult:
    """Export SOURCE (checkpoint object, HF dir, .gguf or zoo name) to OUT at TYPE.

    TYPE None: a QAT checkpoint is written with the blocks it trained (the file reproduces its
    forward pass), anything else at F16. An explicit TYPE requantizes from the weights.
    method: rtn (no calibration), or imatrix / gptq / gptq+imatrix with `calibration`
    (export.gguf.calibrated.Calibration), inside llama.cpp's type mix for TYPE.
    """
    if type is not None:
        gtypes.parse(type)  # an unknown type fails before loading anything
    if method != "rtn" and type is None:
        raise SlimkitError(f"--method {method} needs an explicit --type (e.g. --type Q4_0)")
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
    trained = type is None and ckpt.quant is not None
    etype = gtypes.parse(gtypes.file_type_of(ckpt.quant.plan) if trained else (type or "F16"))
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    intermediate = tmp.with_suffix(".f32.partial")
    stored_ckpt, as_stored = ckpt, trained
    try:
        if method != "rtn":
            from export.gguf.calibrated import export_calibrated

            stored_ckpt, counts, as_stored = export_calibrated(ckpt, tmp, etype, method, calibration)
        elif etype.native or trained:
            counts = write_native(ckpt, tmp, etype, trained)
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

            report = validate_gguf(tmp, stored_ckpt, etype.name, text=validation_text, weights_as_stored=as_stored)
            report_path = out.with_name(out.name + ".validation.json")
            atomic_write(report_path, json.dumps(report, indent=2).encode())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        intermediate.unlink(missing_ok=True)
    return ExportResult(out, etype.name, seconds, out.stat().st_size / 1e6, report, counts, trained)
