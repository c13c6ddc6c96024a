"""Files of an exported ONNX directory (cheap checks; no onnxruntime import)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.errors import SlimkitError

MODEL_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
INFO_FILE = "slimkit_onnx.json"  # export config + source history
VALIDATION_FILE = "validation.json"


def is_onnx_dir(path: str | Path) -> bool:
    """A directory that looks like an ONNX export (genai_config.json or model.onnx inside)."""
    path = Path(path)
    return path.is_dir() and ((path / GENAI_CONFIG).is_file() or (path / MODEL_FILE).is_file())


def genai_config(path: Path) -> dict[str, Any]:
    cfg_path = path / GENAI_CONFIG
    if not cfg_path.is_file():
        raise SlimkitError(f"{path} has no {GENAI_CONFIG}; export it again with `slimkit export onnx`")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlimkitError(f"{cfg_path} is not valid JSON ({exc}); export the model again") from None


def model_path(path: Path) -> Path:
    """The decoder .onnx file named in genai_config.json, checked to exist."""
    name = genai_config(path).get("model", {}).get("decoder", {}).get("filename", MODEL_FILE)
    model = path / name
    if not model.is_file():
        raise SlimkitError(f"{path} has no {name}; the export is incomplete: export it again")
    return model


def file_mb(path: Path) -> float:
    """Size of the model files (.onnx + external data), in MB (1e6 bytes) like GGUF file_mb."""
    return sum(f.stat().st_size for f in path.iterdir() if f.name.startswith(MODEL_FILE)) / 1e6
