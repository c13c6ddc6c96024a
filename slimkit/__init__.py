"""slimkit: the product surface (CLI, pipeline, reports) over compress, export and devices.

The Python API is one verb per stage, each taking a model (a Checkpoint, a `(model, tokenizer)`
pair or a source) and a frozen, versioned config (slimkit.verbs, slimkit.configs):

    import slimkit
    student = slimkit.prune("smollm2-135m-instruct", slimkit.PruneConfig(target_params=0.75, method="magnitude"))
    student = slimkit.distill(student, "smollm2-135m-instruct", slimkit.DistillConfig(tokens=4096), data=["a.txt"])
    slimkit.export_gguf(student, slimkit.GGUFConfig(type="Q8_0"), "student.gguf")

Names are imported on first use, so `import slimkit` (and the CLI) loads no torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_VERBS = ("prune", "distill", "qat", "export_gguf", "export_onnx", "profile", "as_checkpoint")
_CONFIGS = ("PruneConfig", "DistillConfig", "QATConfig", "QATPlan", "GGUFConfig", "OnnxConfig", "ProfileConfig")
__all__ = [*_VERBS, *_CONFIGS, "load", "save"]


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        from slimkit import verbs

        return getattr(verbs, name)
    if name in _CONFIGS:
        from slimkit import configs

        return getattr(configs, name)
    if name in ("load", "save"):
        from compress import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")
