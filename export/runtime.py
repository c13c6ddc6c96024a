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


def sample_token(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> int:
    """One token from softmax(logits / temperature), restricted to the top_k most likely (0: all) and
    then to the smallest set whose probability reaches top_p; one uniform draw from `rng`."""
    z = logits.astype(np.float64) / temperature
    ids = np.arange(z.size)
    if 0 < top_k < z.size:
        ids = np.argpartition(z, -top_k)[-top_k:]
        z = z[ids]
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        ids, p = ids[keep], p[keep] / p[keep].sum()
    c = np.cumsum(p)
    return int(ids[min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), c.size - 1)])


class BatchedGenerator:
    """Many sequences sampled together in one llama.cpp context: every step is one llama_decode of
    the next token of each active sequence (a matrix-matrix product where one sequence at a time
    makes a matrix-vector product per token), a finished sequence's slot taking the next prompt.
    Sampling is numpy's (`sample_token`), each sequence from its own generator, so a sequence's
    tokens depend on its seed and the model, not on which slot or step it ran in (up to the float
    rounding of batched matmuls, which llama.cpp does not make batch-invariant)."""

    def __init__(self, runner: LlamaRunner, slots: int = 16, max_len: int = 512, threads: int | None = None) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.runner, self.slots, self.max_len = runner, slots, max_len
        model = runner.llm._model.model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = runner.llm.n_vocab()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slots * max_len
        params.n_batch = params.n_ubatch = max(512, slots)
        params.n_seq_max = slots
        params.kv_unified = False   # a KV stream per sequence: attention reads only its own cells
        params.n_threads = params.n_threads_batch = threads or min(4, os.cpu_count() or 1)
        with quiet_stderr():
            self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise SlimkitError(f"llama.cpp could not make a {slots}-sequence context of {max_len} tokens each: "
                               "lower the number of sequences")
        self.n_batch = params.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.memory = llama_cpp.llama_get_memory(self.ctx)

    def close(self) -> None:
        if self.ctx:
            self._lc.llama_batch_free(self.batch)
            self._lc.llama_free(self.ctx)
            self.ctx = None

    def generate(self, jobs: Iterator[tuple[object, list[int], np.random.Generator]], max_tokens: int,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
                 ) -> Iterator[tuple[object, list[int]]]:
        """For each (key, prompt ids, generator) from `jobs`, yield (key, sampled ids) once the
        sequence ends (an end-of-generation token, not included, or max_tokens), in completion order."""
        lc = self._lc
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        jobs = iter(jobs)
        free = list(range(self.slots))[::-1]
        active: dict[int, list] = {}     # slot -> [key, rng, position, pending ids, sampled ids]
        exhausted = False
        while True:
            while free and not exhausted:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                    break
                key, prompt, rng = job
                if not prompt or len(prompt) + max_tokens > self.max_len or len(prompt) > self.n_batch:
                    raise ValueError(f"a prompt of {len(prompt)} tokens + {max_tokens} does not fit "
                                     f"{self.max_len} per sequence and a batch of {self.n_batch}"
                                     if prompt else "an empty prompt")
                active[free.pop()] = [key, rng, 0, list(prompt), []]
            if not active:
                return
            # one batch: whole pending prompts while they fit, then one token per generating sequence
            b, outputs = self.batch, []
            b.n_tokens = 0
            for slot, st in sorted(active.items()):
                pending = st[3]
                if b.n_tokens + len(pending) > self.n_batch:
                    continue
                for tok in pending:
                    j = b.n_tokens
                    b.token[j], b.pos[j], b.n_seq_id[j], b.seq_id[j][0], b.logits[j] = tok, st[2], 1, slot, False
                    st[2] += 1
                    b.n_tokens += 1
                b.logits[b.n_tokens - 1] = True
                outputs.append((slot, b.n_tokens - 1))
                st[3] = []
            with quiet_stderr():
                rc = lc.llama_decode(self.ctx, b)
            if rc != 0:
                raise SlimkitError(f"llama.cpp decode failed (code {rc}) with {len(active)} sequences")
            for slot, j in outputs:
                st = active[slot]
                row = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, j), shape=(self.n_vocab,))
                tok = sample_token(row, st[1], temperature, top_k, top_p)
                done = lc.llama_vocab_is_eog(self.vocab, tok)
                if not done:
                    st[4].append(tok)
                    st[3] = [tok]
                if done or len(st[4]) >= max_tokens:
                    lc.llama_memory_seq_rm(self.memory, slot, -1, -1)
                    del active[slot]
                    free.append(slot)
                    yield st[0], st[4]
