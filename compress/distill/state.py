"""Training checkpoints that resume exactly: student weights (a normal slimkit checkpoint written by
compress.checkpoint.save), projections, optimizer, scheduler, RNG states and the step (the data
position follows from the step: see compress.distill.order.window_order).

    <OUT>.state/checkpoints/step-000120/student/      HF directory + slimkit.json
    <OUT>.state/checkpoints/step-000120/trainer.pt    everything else (torch.save of plain types)
    <OUT>.state/checkpoints/step-000120/fingerprint.json   what resuming must match (distill.fingerprint)

A QAT student (fake-quant parametrizations, compress.quant.qat) is saved instead as its raw
module state, student_qat.safetensors (latent weights and learned scales), and converted only at
the end of training.

A checkpoint directory is assembled under a temporary name and renamed into place, so a crash
leaves the previous checkpoint intact and never a half-written one.
"""
from __future__ import annotations

import copy
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from compress.atomic import replace_dir
from compress.checkpoint import Checkpoint, load, save
from compress.errors import SlimkitError
from compress.quant.qat import is_prepared

PREFIX = "step-"
QAT_STUDENT = "student_qat.safetensors"


def state_dir(out: Path) -> Path:
    """Run state lives beside OUT: OUT itself is replaced whole by the final save."""
    return out.parent / f"{out.name}.state"


def checkpoints(state: Path) -> list[Path]:
    root = state / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "trainer.pt").is_file())


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(state: Path, step: int, ckpt: Checkpoint, inner: Any, optimizer: Any, scheduler: Any,
                    extra: dict[str, Any], keep: int, fingerprint: dict[str, Any] | None = None) -> Path:
    root = state / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        if is_prepared(inner.student):  # fake-quant parametrizations: not a HF checkpoint until converted
            from safetensors.torch import save_model

            save_model(inner.student, str(tmp / QAT_STUDENT))
            with open(tmp / QAT_STUDENT, "rb") as f:
                os.fsync(f.fileno())
        else:
            save(Checkpoint(inner.student, ckpt.tokenizer, copy.deepcopy(ckpt.history), ckpt.gguf_vocab),
                 tmp / "student")
        torch.save({"step": step, "projections": inner.projections.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), **extra}, tmp / "trainer.pt")
        with open(tmp / "trainer.pt", "rb") as f:
            os.fsync(f.fileno())
        if fingerprint is not None:   # what a resumed run must match (compress.distill.fingerprint)
            from compress.distill.fingerprint import write

            write(tmp, fingerprint)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(state)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_checkpoint(path: Path, inner: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Load a checkpoint into the live objects; returns trainer.pt's dict (step, extras)."""
    try:
        saved = torch.load(path / "trainer.pt", weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types for a truncated pickle
        raise SlimkitError(f"cannot read {path / 'trainer.pt'} ({exc}); delete {path} to resume from the one before") from None
    if (path / QAT_STUDENT).is_file():
        from safetensors.torch import load_model

        load_model(inner.student, str(path / QAT_STUDENT), device=str(next(inner.student.parameters()).device))
    else:
        weights = load(path / "student").model.state_dict()
        device = next(inner.student.parameters()).device
        inner.student.load_state_dict({k: v.to(device) for k, v in weights.items()})
    inner.projections.load_state_dict(saved["projections"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return saved
