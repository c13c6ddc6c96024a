"""`slimkit eval`: perplexity of any source or artifact under compress.evaluate's protocol."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress import gguf_file
from compress.evaluate import read_text, torch_perplexity
from export.onnx.layout import is_onnx_dir


def evaluate_source(source: str, text_path: str | Path, ctx: int = 512, max_chunks: int | None = None,
                    progress: bool = False) -> dict[str, Any]:
    path = Path(source)
    is_gguf = path.is_file() and gguf_file.is_gguf(path)
    if is_gguf:
        gguf_file.check(path)  # a corrupt artifact is reported before anything else is read
    text = read_text(text_path)
    if is_gguf:
        from export.runtime import gguf_perplexity

        result, runtime = gguf_perplexity(path, text, ctx, max_chunks, progress), "llama.cpp"
    elif is_onnx_dir(path):
        from export.onnx.runtime import onnx_perplexity

        result, runtime = onnx_perplexity(path, text, ctx, max_chunks, progress), "onnxruntime"
    else:
        from compress.checkpoint import load

        model, tokenizer = load(source)
        result, runtime = torch_perplexity(model, tokenizer, text, ctx, max_chunks, progress), "torch"
    return {"source": str(source), "runtime": runtime, "text": str(text_path), **result.to_dict()}
