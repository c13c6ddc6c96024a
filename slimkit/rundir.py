"""The run directory's bookkeeping for slimkit.pipeline: content hashes, the atomic manifest, and
the paths a recipe names (`{shared_data}`, with fallbacks when ../shared/data is absent)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from compress.atomic import atomic_write
from compress.checkpoint import tree_sha256 as tree_hash  # noqa: F401 (the pipeline's content hash)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # optional public data


def config_hash(argv: list[str]) -> str:
    return hashlib.sha256(json.dumps(argv).encode()).hexdigest()


class Manifest:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"stages": {}}

    def get(self, name: str) -> dict[str, Any]:
        return self.doc["stages"].get(name, {})

    def put(self, name: str, **record: Any) -> None:
        self.doc["stages"][name] = {**self.doc["stages"].get(name, {}), **record}
        atomic_write(self.path, json.dumps(self.doc, indent=2, default=str).encode())


def resolve_paths(recipe: Any, run_dir: Path, log) -> Path | None:
    """`{shared_data}` in option values is ../shared/data. Without it, `data` files are dropped
    (distillation then samples its corpus from the teacher) and a missing eval `text` becomes text
    sampled from the teacher; returns that file's path when one is needed."""
    fallback = None
    for stage in recipe.stages:
        for key, value in list(stage.options.items()):
            values = value if isinstance(value, list) else [value]
            if not any(isinstance(v, str) and "{shared_data}" in v for v in values):
                continue
            paths = [str(v).replace("{shared_data}", str(SHARED_DATA)) for v in values]
            present = [p for p in paths if Path(p).exists()]
            if len(present) == len(paths):
                stage.options[key] = paths if isinstance(value, list) else paths[0]
            elif key == "data":
                log(f"warning: {stage.name}: {SHARED_DATA} is absent; training on a corpus sampled from the teacher")
                del stage.options[key]
            else:
                fallback = run_dir / "eval_text.txt"
                log(f"warning: {stage.name}: {SHARED_DATA} is absent; evaluating on text sampled from the teacher")
                stage.options[key] = str(fallback)
    return fallback


def sample_text(teacher: str, path: Path, log, tokens: int = 8192) -> None:
    """Text sampled from the teacher (seeded), the evaluation text of last resort."""
    from compress.checkpoint import load
    from compress.data import teacher_corpus

    log(f"sampling {tokens} tokens of evaluation text from {teacher}")
    ckpt = load(teacher)
    corpus = teacher_corpus(ckpt.model, ckpt.tokenizer, tokens, 256, 0.0, seed=1234, progress=False)
    text = "\n\n".join(ckpt.tokenizer.decode(w, skip_special_tokens=True) for w in corpus.train)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode())
