"""Run a GGUF artifact in llama.cpp (llama-cpp-python): tokenize and get full logits."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from compress import gguf_file
from compress.errors import SlimkitError
from export.probe import probe_gguf


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """llama.cpp logs to fd 2 from C; silence it unless SLIMKIT_LLAMA_LOG=1."""
    if os.environ.get("SLIMKIT_LLAMA_LOG") == "1":
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LlamaRunner:
    """One llama.cpp context with logits for every position."""

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512, threads: int | None = None,
                 kv_f32: bool = False) -> None:
        """kv_f32: keep the KV cache in F32 instead of llama.cpp's default F16 (exact parity checks)."""
        try:
            import llama_cpp
        except ImportError:
            raise SlimkitError("running GGUF files needs llama-cpp-python: pip install 'slimkit[llama]'") from None
        path = Path(path)
        gguf_file.check(path)  # llama.cpp aborts the process on some corrupt files ...
        probe_gguf(path)  # ... and on some that pass every check: open it in a child first
        self.n_ctx = n_ctx
        kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if kv_f32 else {}
        with quiet_stderr():
            try:
                self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                           logits_all=True, n_threads=threads or min(4, os.cpu_count() or 1),
                                           verbose=False, **kv)
            except ValueError as exc:
                raise SlimkitError(f"llama.cpp could not load {path}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 (llama-cpp-python parses the chat template with jinja2 on load)
                raise SlimkitError(f"llama.cpp could not load {path}: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''} (a damaged chat template?)") from None

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """(len(tokens), n_vocab) float32 logits of one sequence from position 0."""
        if len(tokens) > self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens exceed the context of {self.n_ctx}")
        self.llm.reset()
        with quiet_stderr():
            self.llm.eval(list(tokens))
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    @property
    def bos_id(self) -> int:
        return self.llm.token_bos()

    def close(self) -> None:
        self.llm.close()


def gguf_adds_bos(path: str | os.PathLike) -> bool:
    return bool(gguf_file.read_info(path).get("tokenizer.ggml.add_bos_token", False))


def gguf_perplexity(path: str | os.PathLike, text: str, ctx: int = 512, max_chunks: int | None = None,
                    progress: bool = False):
    """Perplexity of a .gguf in llama.cpp under compress.evaluate's protocol."""
    from compress.evaluate import make_windows, perplexity

    runner = LlamaRunner(path, n_ctx=ctx)
    try:
        tokens = runner.tokenize(text)
        bos = runner.bos_id if gguf_adds_bos(path) else None
        return perplexity(runner.logits, make_windows(tokens, ctx, max_chunks, bos), progress)
    finally:
        runner.close()
