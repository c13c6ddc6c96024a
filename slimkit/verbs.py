"""slimkit's Python API: one verb per stage, each taking a model and a frozen, versioned config
(slimkit.configs). A model is a compress.checkpoint.Checkpoint, a `(torch model, tokenizer)` pair,
or a source (HF directory, .gguf file, zoo name); the model verbs (prune, distill, qat) return a
Checkpoint in memory, changed in place as torchao's `quantize_` does, so stages chain without a
save in between. The verbs wrap the library (compress.prune, compress.distill.trainer, export.gguf,
export.onnx, devices.profile); nothing is computed here.
"""
from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from compress.errors import SlimkitError
from slimkit.configs import DistillConfig, GGUFConfig, OnnxConfig, ProfileConfig, QATConfig

Model = Any  # Checkpoint | (model, tokenizer) | str | os.PathLike


def as_checkpoint(model: Model) -> Any:
    """A compress.checkpoint.Checkpoint for any accepted form of a model (a source is loaded)."""
    from compress.checkpoint import HISTORY_FORMAT, Checkpoint, load

    if isinstance(model, Checkpoint):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(model)
    if isinstance(model, tuple) and len(model) == 2 and hasattr(model[0], "config"):
        return Checkpoint(model[0], model[1], {"format": HISTORY_FORMAT, "stages": [], "source": "memory"})
    raise SlimkitError(f"expected a model: a Checkpoint, a (model, tokenizer) pair or a source (HF directory, "
                       f".gguf file, zoo name), got {type(model).__name__}")


def _check(config: Any, cls: type, verb: str) -> None:
    if not isinstance(config, cls):
        raise SlimkitError(f"slimkit.{verb} takes a {cls.__name__} (or {cls.__name__}.from_dict(...)), "
                           f"got {type(config).__name__}")


def prune(model: Model, config: Any, *, progress: bool = True, on_plan: Any = None) -> Any:
    """Structured pruning per `config`, a PruneConfig (compress.prune); the stage is recorded in the history."""
    from compress.checkpoint import record_stage
    from compress.prune import PruneConfig, prune as prune_checkpoint

    _check(config, PruneConfig, "prune")
    res = prune_checkpoint(as_checkpoint(model), config, progress=progress, on_plan=on_plan)
    ckpt = res.checkpoint
    ckpt.history = copy.deepcopy(ckpt.history or {"stages": []})
    record_stage(ckpt.history, res.stage)
    ckpt.history["weights_sha256"] = None   # these weights are not the parent's; save() hashes them
    return ckpt


def _teacher_specs(teachers: Any, names: list[str], weights: Sequence[float] | None,
                   options: dict[str, Any] | None) -> list[Any]:
    from compress.distill.teachers import TeacherSpec, make_specs

    given = [t for t in teachers if isinstance(t, TeacherSpec)]
    if given and (len(given) != len(names) or weights or options):
        raise SlimkitError("give teachers either as TeacherSpec objects or as models with weights/teacher_options, "
                           "not both")
    return given or make_specs(names, weights, **(options or {}))


def distill(student: Model, teachers: Any, config: DistillConfig, *, data: Sequence[str | Path] = (),
            out: str | Path | None = None, resume: bool = False, progress: bool = True,
            weights: Sequence[float] | None = None, teacher_options: dict[str, Any] | None = None,
            qat: Any = None) -> Any:
    """Distil `teachers` (a model, a list of models, or compress.distill.teachers.TeacherSpec
    objects; none: cross-entropy on `data` alone) into `student`, trained in place and returned.

    `data`: text / jsonl files (none: a corpus sampled from the first teacher); `weights`: one per
    teacher (default 1/n); `teacher_options`: the loss mix (loss, beta, temperature, feature_loss,
    feature_weight, relation_weight, layer_map, quantize); `out`: where the checkpoint and its
    training state go (default: a temporary directory, removed; the result stays in memory)."""
    from compress import live
    from compress.distill.teachers import TeacherSpec
    from compress.distill.trainer import distill as train

    _check(config, DistillConfig, "distill")
    if teachers is None:
        teachers = []
    elif not isinstance(teachers, (list, tuple)) or (isinstance(teachers, tuple) and len(teachers) == 2
                                                     and hasattr(teachers[0], "config")):
        teachers = [teachers]
    ckpt = as_checkpoint(student)
    with contextlib.ExitStack() as stack:
        name = stack.enter_context(live.registered(ckpt))
        sources = [t.source if isinstance(t, TeacherSpec) else
                   str(t) if isinstance(t, (str, os.PathLike)) else stack.enter_context(live.registered(as_checkpoint(t)))
                   for t in teachers]
        specs = _teacher_specs(teachers, sources, weights, teacher_options)
        where = Path(out) if out is not None else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model"
        train(name, specs, where, config, data=list(data), resume=resume, progress=progress, qat=qat)
        if out is None:
            ckpt.path = None
    ckpt.model.eval()
    return ckpt


def qat(model: Model, config: QATConfig, *, data: Sequence[str | Path] = (), teachers: Any = None,
        out: str | Path | None = None, resume: bool = False, progress: bool = True) -> Any:
    """Quantization-aware distillation into exact GGUF blocks (config.plan); the returned checkpoint's
    `quant` holds the trained blocks, which `export_gguf` without a type writes as they are."""
    _check(config, QATConfig, "qat")
    if not config.self_distill and not data:
        raise SlimkitError("QATConfig.self_distill=False trains on the data alone: give data=[FILE, ...]")
    ckpt = as_checkpoint(model)
    if teachers is None and config.self_distill:   # the full-precision model itself, as it is now
        teachers = [str(model) if isinstance(model, (str, os.PathLike)) else copy.deepcopy(ckpt)]
    return distill(ckpt, teachers, config.training, data=data, out=out, resume=resume, progress=progress,
                   qat=config.plan)


def export_gguf(model: Model, config: GGUFConfig, out: str | Path, *, validation_text: str | None = None) -> Any:
    """Write a GGUF file (export.gguf.writer), validated in llama.cpp unless config.validate is off;
    returns its export.gguf.writer.ExportResult."""
    from export.gguf.writer import export_gguf as write
    from slimkit.calibrate import export_source

    _check(config, GGUFConfig, "export_gguf")
    source, method, calibration = export_source(_source(model), out, config)
    return write(source, out, config.type, validate=config.validate, validation_text=validation_text,
                 method=method, calibration=calibration)


def export_onnx(model: Model, config: OnnxConfig, out: str | Path, *, validation_text: str | None = None) -> Any:
    """Write an ONNX decoder directory (export.onnx), validated in ONNX Runtime unless config.validate
    is off; returns its export.onnx.export.OnnxExportResult."""
    from export.onnx.export import export_onnx as write

    _check(config, OnnxConfig, "export_onnx")
    return write(_source(model), out, config.precision, block_size=config.block_size, validate=config.validate,
                 validation_text=validation_text)


def _source(model: Model) -> Any:
    """A source stays a source (the exporters load only what they need); anything else a Checkpoint."""
    return model if isinstance(model, (str, os.PathLike)) else as_checkpoint(model)


def profile(artifact: str | Path, device: str = "local", config: ProfileConfig | None = None) -> dict[str, Any]:
    """Measure a .gguf file or ONNX directory on a device (local, ssh://, adb://), or predict for a
    device profile name (devices.profile); returns the JSON record."""
    from devices.errors import DeviceError
    from devices.profile import profile as run

    config = config or ProfileConfig()
    _check(config, ProfileConfig, "profile")
    try:
        return run(artifact, device, config.runtime, ctx=config.ctx, threads=config.threads,
                   repetitions=config.repetitions, identity=config.identity, python=config.python,
                   calibration=config.calibration, timeout=config.timeout, env=list(config.env))
    except DeviceError as exc:  # devices does not import compress: the same one-line error
        raise SlimkitError(str(exc)) from None
