"""Benchmark an ONNX causal LM with a KV cache in ONNX Runtime and print one JSON record (runs ON the target).

The model directory (as `slimkit export onnx` writes it: genai_config.json names the decoder file and its
KV-cache shape; a HF config.json also works) holds model.onnx (+ external data) with inputs input_ids,
attention_mask, optionally position_ids, and past_key_values.<i>.key / .value; outputs logits and
present.<i>.key / .value (the layout optimum and onnxruntime-genai use). Tests and field names as in run_llama.py: pp<N> from an empty cache in
one call, tg<N> one token per call feeding the cache back, a warm-up before each, --repetitions timed runs.

usage: python3 run_onnx.py --model DIR [--threads 2] [--repetitions 5] [--prompt 128,512] [--gen 128]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, fail, peak_rss_bytes, stats, timing_test  # noqa: E402

EXIT_MISSING_RUNTIME, EXIT_RUN_FAILED = 3, 4
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def model_config(model_dir: str) -> dict:
    """filename, kv heads, head size, vocab from genai_config.json (slimkit export onnx) or a HF config.json."""
    genai, hf = os.path.join(model_dir, "genai_config.json"), os.path.join(model_dir, "config.json")
    if os.path.isfile(genai):
        m = json.load(open(genai))["model"]
        d = m.get("decoder", {})
        return {"filename": d.get("filename", "model.onnx"), "n_kv": d.get("num_key_value_heads"),
                "head_dim": d.get("head_size"), "vocab": m.get("vocab_size")}
    if os.path.isfile(hf):
        c = json.load(open(hf))
        c = c.get("text_config", c)
        heads = c.get("num_attention_heads")
        return {"filename": "model.onnx", "n_kv": c.get("num_key_value_heads") or heads, "vocab": c.get("vocab_size"),
                "head_dim": c.get("head_dim") or (c["hidden_size"] // heads if heads and "hidden_size" in c else None)}
    return {"filename": "model.onnx", "n_kv": None, "head_dim": None, "vocab": None}


class KVModel:
    def __init__(self, ort, model_dir: str, threads: int) -> None:
        self.config = model_config(model_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(os.path.join(model_dir, self.config["filename"]), opts,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.past = sorted(n for n in self.inputs if n.startswith(PAST_PREFIX))
        if "input_ids" not in self.inputs or not self.past:
            fail(f"{model_dir}/{self.config['filename']} has no input_ids / past_key_values.* inputs: export it "
                 "with a KV cache", EXIT_RUN_FAILED, "run_failed")
        vocab = self.config["vocab"] or self.session.get_outputs()[0].shape[-1]
        if not isinstance(vocab, int):
            fail(f"{model_dir}: vocabulary size unknown (no genai_config.json or config.json)", EXIT_RUN_FAILED,
                 "run_failed")
        self.n_vocab = vocab

    def empty_cache(self):
        import numpy as np

        cache = {}
        n_kv, head_dim = self.config["n_kv"], self.config["head_dim"]
        for name in self.past:
            shape = self.inputs[name].shape  # [batch, kv_heads, past_len, head_dim], some dims symbolic
            dims = [1, n_kv, 0, head_dim]
            dims = [d if isinstance(d, int) and i != 2 else dims[i] for i, d in enumerate(shape)]
            cache[name] = np.zeros(dims, dtype=DTYPES.get(self.inputs[name].type, "float32"))
        return cache

    def step(self, ids: list[int], cache: dict, past_len: int):
        """Run ids after past_len cached positions: (logits, new cache)."""
        import numpy as np

        n = len(ids)
        feed = dict(cache)
        int_t = lambda name: DTYPES.get(self.inputs[name].type, "int64")  # noqa: E731
        feed["input_ids"] = np.asarray([ids], dtype=int_t("input_ids"))
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, past_len + n), dtype=int_t("attention_mask"))
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(past_len, past_len + n, dtype=int_t("position_ids"))[None]
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(None, feed)))
        new = {PAST_PREFIX + k[len(PRESENT_PREFIX):]: v for k, v in out.items() if k.startswith(PRESENT_PREFIX)}
        return out[names[0]] if "logits" not in out else out["logits"], new


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="ONNX model directory (model.onnx inside)")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--prompt", default="128,512")
    p.add_argument("--gen", type=int, default=128)
    a = p.parse_args(argv)
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        fail("onnxruntime is not installed on the target: pip install onnxruntime there", EXIT_MISSING_RUNTIME,
             "missing_runtime")
    if not os.path.isfile(os.path.join(a.model, model_config(a.model)["filename"])):
        fail(f"{a.model}: no {model_config(a.model)['filename']} on the target", EXIT_RUN_FAILED, "run_failed")
    prompts = [int(x) for x in a.prompt.split(",") if x.strip() and int(x) > 0]
    loads, model = [], None
    for _ in range(max(1, min(3, a.repetitions))):
        del model
        t0 = time.perf_counter()
        try:
            model = KVModel(ort, a.model, a.threads)
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            fail(f"onnxruntime could not load {a.model}: {str(exc).splitlines()[0][:300]}", EXIT_RUN_FAILED,
                 "run_failed")
        loads.append(time.perf_counter() - t0)
    rng = random.Random(0)
    tokens = lambda n: [rng.randrange(model.n_vocab) for _ in range(n)]  # noqa: E731

    def prefill(n: int) -> float:
        ids, cache = tokens(n), model.empty_cache()
        t0 = time.perf_counter()
        model.step(ids, cache, 0)
        return time.perf_counter() - t0

    kv_len = {}

    def generate(n: int) -> float:
        ids, cache = tokens(n), model.empty_cache()
        t0 = time.perf_counter()
        for i, tok in enumerate(ids):
            _, cache = model.step([tok], cache, i)
        elapsed = time.perf_counter() - t0
        kv_len["tg"] = int(next(iter(cache.values())).shape[2]) if cache else None  # positions held in the cache
        return elapsed

    def first_token(n: int) -> float:
        ids, cache = tokens(n), model.empty_cache()
        t0 = time.perf_counter()
        logits, _ = model.step(ids, cache, 0)
        int(np.argmax(logits[0, -1]))
        return time.perf_counter() - t0

    tests = []
    try:
        for n in prompts:
            prefill(n)
            tests.append(timing_test(f"pp{n}", n, 0, [prefill(n) for _ in range(a.repetitions)]))
        if a.gen:
            generate(2)
            tests.append(timing_test(f"tg{a.gen}", 0, a.gen, [generate(a.gen) for _ in range(a.repetitions)]))
        ttft = stats([first_token(prompts[0]) * 1e3 for _ in range(a.repetitions)]) if prompts else None
    except Exception as exc:  # shape or type mismatch inside onnxruntime
        fail(f"onnxruntime could not run {a.model}: {str(exc).splitlines()[0][:300]}", EXIT_RUN_FAILED, "run_failed")
    size = sum(os.path.getsize(os.path.join(a.model, f)) for f in os.listdir(a.model)
               if os.path.isfile(os.path.join(a.model, f)))
    emit({"runner": "onnxruntime", "backend": "onnxruntime", "onnxruntime": ort.__version__,
          "model_filename": os.path.basename(os.path.normpath(a.model)), "artifact_bytes": size,
          "repetitions": a.repetitions, "n_threads": a.threads, "load_s": stats(loads), "ttft_ms": ttft,
          "ttft_method": "prefill of the first prompt + greedy choice of the first token",
          "peak_rss_bytes": peak_rss_bytes(), "kv_cache_len_after_tg": kv_len.get("tg"), "tests": tests})


if __name__ == "__main__":
    main()
