"""The configs of slimkit's verbs: each a frozen dataclass validated on construction (a one-line
SlimkitError naming the option), carrying a VERSION, with `to_dict` / `from_dict` (compress.config_io).

Most live beside the code they configure and are re-exported here: PruneConfig (compress.prune),
DistillConfig (compress.distill.config), QATPlan (compress.quant.plans), GGUFConfig
(export.gguf.config), OnnxConfig (export.onnx.config.OnnxExportConfig). This module adds the two
that compose them or wrap a package that cannot raise SlimkitError: QATConfig and ProfileConfig.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from compress import config_io
from compress.distill.config import DistillConfig
from compress.errors import SlimkitError
from compress.quant.plans import QATPlan
from export.gguf.config import GGUFConfig
from export.onnx.config import OnnxExportConfig as OnnxConfig

__all__ = ["DistillConfig", "GGUFConfig", "OnnxConfig", "ProfileConfig", "PruneConfig", "QATConfig", "QATPlan"]

PROFILE_RUNTIMES = ("llama.cpp", "onnxruntime")   # devices.profile.RUNTIMES (checked by a test)


def __getattr__(name: str) -> Any:
    if name == "PruneConfig":   # compress.prune imports torch: only when asked for (the CLI's profile does not)
        from compress.prune.api import PruneConfig

        return PruneConfig
    raise AttributeError(f"module 'slimkit.configs' has no attribute {name!r}")


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware distillation: the GGUF type plan and the training run. With
    `self_distill` the teacher is the model itself at full precision (unless teachers are given);
    without it the student trains on the data alone (cross-entropy: training.ce_weight > 0)."""

    VERSION: ClassVar[int] = 1
    training: DistillConfig
    plan: QATPlan = QATPlan()
    self_distill: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.training, DistillConfig) or not isinstance(self.plan, QATPlan):
            raise SlimkitError("QATConfig.training is a DistillConfig and QATConfig.plan a QATPlan, e.g. "
                               "QATConfig(DistillConfig(tokens=8192), QATPlan('q4_0'))")
        if not self.self_distill and self.training.ce_weight <= 0:
            raise SlimkitError("QATConfig.self_distill=False trains on the data alone: give "
                               "training=DistillConfig(..., ce_weight=1) and data files")

    def to_dict(self) -> dict[str, Any]:
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QATConfig:
        return config_io.from_dict(cls, d)


@dataclass(frozen=True)
class ProfileConfig:
    """How `slimkit.profile` measures (or predicts): devices.profile.profile's options."""

    VERSION: ClassVar[int] = 1
    runtime: str | None = None        # llama.cpp | onnxruntime; None: from the artifact
    ctx: int = 512                    # context length for the KV cache and the memory check
    threads: int = 2
    repetitions: int = 5
    identity: str | None = None       # ssh private key file
    python: str | None = None         # python on the target
    calibration: str | None = None    # calibration JSON for predictions
    timeout: float = 900.0            # seconds the run may take on the target
    env: tuple[str, ...] = ()         # KEY=VALUE for the runner on the target

    def __post_init__(self) -> None:
        if self.runtime is not None and self.runtime not in PROFILE_RUNTIMES:
            raise SlimkitError(f"unknown --runtime {self.runtime!r}; choose one of {', '.join(PROFILE_RUNTIMES)}")
        for name in ("ctx", "threads", "repetitions"):
            if getattr(self, name) < 1:
                raise SlimkitError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise SlimkitError(f"--timeout must be > 0 seconds, got {self.timeout}")
        object.__setattr__(self, "env", tuple(self.env))
        bad = [kv for kv in self.env if "=" not in kv or kv.startswith("=")]
        if bad:
            raise SlimkitError(f"--env {bad[0]}: expected KEY=VALUE, e.g. OMP_WAIT_POLICY=PASSIVE")

    def to_dict(self) -> dict[str, Any]:
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProfileConfig:
        return config_io.from_dict(cls, d)
