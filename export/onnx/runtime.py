"""Run an exported ONNX directory in ONNX Runtime (CPU): logits with and without the KV cache,
greedy decoding, perplexity under compress.evaluate's protocol, and onnxruntime-genai."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from compress.errors import SlimkitError
from export.onnx.builder import INSTALL_HINT
from export.onnx.layout import genai_config, model_path
from export.probe import probe_onnx

Past = dict[str, np.ndarray]  # "past_key_values.{i}.{key|value}" -> (1, kv_heads, past_len, head_size)


class OnnxRunner:
    """One ONNX Runtime session of an exported decoder (batch 1)."""

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SlimkitError(f"running ONNX models needs onnxruntime: {INSTALL_HINT}") from None
        self.dir = Path(model_dir)
        decoder = genai_config(self.dir)["model"]["decoder"]
        path = model_path(self.dir)
        self.layers, self.kv_heads = decoder["num_hidden_layers"], decoder["num_key_value_heads"]
        self.head_size = decoder["head_size"]
        probe_onnx(self.dir, path)  # ONNX Runtime may end the process on a damaged file: open it in a child first
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        # No busy-waiting between runs: on a few shared cores, spinning pool threads starve
        # everything else (torch during validation, other processes).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 4  # fatal only: errors reach the user as SlimkitError instead
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's pybind errors (Fail, InvalidProtobuf, NoSuchFile...)
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise SlimkitError(f"ONNX Runtime could not load {path}: {first}; the export may be truncated: "
                               "export it again") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.has_position_ids = "position_ids" in inputs
        self.kv_dtype = np.float16 if "float16" in inputs["past_key_values.0.key"].type else np.float32
        self.outputs = [o.name for o in self.session.get_outputs()]

    def empty_past(self) -> Past:
        shape = (1, self.kv_heads, 0, self.head_size)
        return {f"past_key_values.{i}.{kv}": np.zeros(shape, self.kv_dtype)
                for i in range(self.layers) for kv in ("key", "value")}

    def forward(self, tokens: Sequence[int], past: Past | None = None) -> tuple[np.ndarray, Past]:
        """Logits (len(tokens), vocab) float32 of `tokens` following `past`, and the new past."""
        past = past if past is not None else self.empty_past()
        past_len = past["past_key_values.0.key"].shape[2]
        n = len(tokens)
        feed = {"input_ids": np.asarray([tokens], dtype=np.int64),
                "attention_mask": np.ones((1, past_len + n), dtype=np.int64), **past}
        if self.has_position_ids:
            feed["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
        try:
            res = dict(zip(self.outputs, self.session.run(None, feed)))
        except Exception as exc:  # onnxruntime's pybind errors: a graph this runtime cannot execute
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise SlimkitError(f"ONNX Runtime failed to run {self.dir}: {first}") from exc
        present = {f"past_key_values.{i}.{kv}": res[f"present.{i}.{kv}"]
                   for i in range(self.layers) for kv in ("key", "value")}
        return res["logits"][0].astype(np.float32), present

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Full recomputation from position 0 (no cache), like LlamaRunner.logits."""
        return self.forward(tokens)[0]

    def greedy(self, prompt: Sequence[int], n: int) -> list[int]:
        """n greedy tokens after `prompt`, decoding one token at a time with the KV cache."""
        logits, past = self.forward(prompt)
        out = [int(logits[-1].argmax())]
        while len(out) < n:
            logits, past = self.forward(out[-1:], past)
            out.append(int(logits[-1].argmax()))
        return out


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise SlimkitError(f"cannot load the tokenizer files of {model_dir} ({str(exc).splitlines()[0]}); "
                           "export the model again") from None
    # The builder writes model_max_length = context length; long texts are cut into windows
    # by the caller, so the "sequence longer than" warning would only be noise.
    tokenizer.model_max_length = 1 << 62
    return tokenizer


def onnx_perplexity(model_dir: str | os.PathLike, text: str, ctx: int = 512, max_chunks: int | None = None,
                    progress: bool = False, threads: int | None = None):
    """Perplexity of an ONNX export under compress.evaluate's protocol (tokenizer files of the
    export, BOS in the first slot when it adds one, every token after the first scored)."""
    from compress.evaluate import adds_bos, make_windows, perplexity, tokenize_plain

    model_dir = Path(model_dir)
    runner = OnnxRunner(model_dir, threads)
    tokenizer = load_tokenizer(model_dir)
    tokens = tokenize_plain(tokenizer, text)
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    return perplexity(runner.logits, make_windows(tokens, ctx, max_chunks, bos), progress)


def genai_model(model_dir: Path, threads: int | None = None):
    """An onnxruntime_genai.Model on the CPU provider, or None when the package is absent."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    config = og.Config(str(model_dir))
    config.clear_providers()
    if threads:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                             "inter_op_num_threads": 1}}}}))
    return og.Model(config)


def genai_greedy(model, prompt: Sequence[int], n: int) -> list[int]:
    """Greedy decoding in onnxruntime-genai; stops early at EOS like an app would."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(list(prompt))
    out: list[int] = []
    while not gen.is_done() and len(out) < n:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out
