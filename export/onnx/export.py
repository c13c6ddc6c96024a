"""`slimkit export onnx`: SOURCE -> a directory onnxruntime-genai loads, validated by default.

DIR holds model.onnx (+ model.onnx.data), genai_config.json, the tokenizer files,
generation_config.json, slimkit_onnx.json (export config + the source's history) and
validation.json. Everything is written to a temporary directory beside DIR and renamed into
place only after validation passed: a failed export leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.atomic import fsync_dir
from compress.checkpoint import Checkpoint, load
from compress.errors import SlimkitError
from export.onnx import builder
from export.onnx.config import OnnxExportConfig
from export.onnx.layout import INFO_FILE, VALIDATION_FILE, file_mb, is_onnx_dir


# Precisions made from the builder's fp32 graph by an ONNX Runtime tool.
POST_PASSES = {"fp16": builder.to_fp16}


@dataclass
class OnnxExportResult:
    path: Path
    precision: str
    seconds: float
    file_mb: float
    validation: dict[str, Any] | None = None


def _check_output(out: Path) -> None:
    if out.is_file():
        raise SlimkitError(f"{out} is a file; -o names the output directory of an ONNX export")
    if out.is_dir() and any(out.iterdir()) and not is_onnx_dir(out):
        raise SlimkitError(f"{out} exists and is not an ONNX export; choose a new or empty directory")
    if not out.parent.is_dir():
        raise SlimkitError(f"output directory {out.parent} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise SlimkitError(f"output directory {out.parent} is not writable; choose another -o path")


def _hf_dir(ckpt: Checkpoint, work: Path, loaded_here: bool) -> Path:
    """A HF directory of the checkpoint for the builder (which reads weights from disk): the
    one this export just loaded, else a fresh copy (a Checkpoint handed in may have been
    changed in memory since it was read)."""
    if loaded_here and ckpt.path is not None and (ckpt.path / "config.json").is_file():
        return ckpt.path
    staged = work / "hf"
    ckpt.model.save_pretrained(staged, safe_serialization=True)
    ckpt.tokenizer.save_pretrained(staged)
    return staged


def _write_sidecars(ckpt: Checkpoint, out: Path, cfg: OnnxExportConfig, log: str) -> None:
    ckpt.model.generation_config.to_json_file(out / "generation_config.json")
    builder_lines = [ln for ln in log.splitlines() if ln.startswith(("WARNING", "GroupQueryAttention"))]
    config = ckpt.model.config.get_text_config()
    # what genai_config.json leaves out and devices.artifact needs (the FFN width, the exact parameter count)
    model = {"n_params": sum(t.numel() for t in ckpt.model.parameters()),  # tied weights once
             "intermediate_size": config.intermediate_size, "tie_word_embeddings": bool(config.tie_word_embeddings)}
    info = {"export": cfg.to_dict(), "builder": "onnxruntime-genai model builder", "builder_notes": builder_lines,
            "versions": _versions(), "model": model, "source": ckpt.history}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("onnx", "onnxruntime", "onnxruntime-genai", "torch", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an older export at `out` is replaced whole."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_onnx(source: Checkpoint | str | os.PathLike, out: str | os.PathLike, precision: str = "fp32", *,
                block_size: int | None = None, validate: bool = True,
                validation_text: str | None = None) -> OnnxExportResult:
    """Export SOURCE (checkpoint object, HF dir, .gguf or zoo name) to directory OUT."""
    cfg = OnnxExportConfig(precision, block_size, validate)
    out = Path(out)
    _check_output(out)
    builder.require_onnx()
    ckpt = source if isinstance(source, Checkpoint) else load(source)
    architecture = builder.check_exportable(ckpt)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        final = work / "onnx"
        built = work / "fp32" if cfg.precision in POST_PASSES else final
        hf_dir = _hf_dir(ckpt, work, loaded_here=not isinstance(source, Checkpoint))
        log = builder.build(hf_dir, built, cfg, architecture, work)
        if cfg.precision in POST_PASSES:
            POST_PASSES[cfg.precision](built, final)
            shutil.rmtree(built)
        _write_sidecars(ckpt, final, cfg, log)
        seconds = time.perf_counter() - start
        report = None
        if validate:
            from export.onnx.validate import validate_onnx

            report = validate_onnx(final, ckpt, cfg.precision, text=validation_text)
            (final / VALIDATION_FILE).write_text(json.dumps(report, indent=2))
        size = file_mb(final)
        _replace_dir(final, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return OnnxExportResult(out, cfg.precision, seconds, size, report)

