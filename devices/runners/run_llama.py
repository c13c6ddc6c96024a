"""Benchmark a GGUF in llama.cpp on this machine and print one JSON record (runs ON the target).

Uses the `llama-bench` binary when it is on PATH (or given with --llama-bench) and reads its JSON output;
otherwise llama-cpp-python, timing the same tests the same way llama-bench does: pp<N> evaluates N random
tokens from an empty KV cache in one batch, tg<N> decodes N tokens one at a time from an empty cache, one
warm-up run each, then --repetitions timed runs.

usage: python3 run_llama.py --model M.gguf [--threads 2] [--repetitions 5] [--prompt 128,512] [--gen 128]
                            [--ctx 1024] [--backend auto|llama-bench|python] [--llama-bench PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, fail, peak_rss_bytes, stats, timing_test  # noqa: E402

EXIT_MISSING_RUNTIME, EXIT_RUN_FAILED = 3, 4  # same values as devices.runners
_QUIET = None


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--prompt", default="128,512")
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--ctx", type=int, default=0, help="context size (default: longest test + gen)")
    p.add_argument("--backend", choices=["auto", "llama-bench", "python"], default="auto")
    p.add_argument("--llama-bench", default=None, help="path of the llama-bench binary")
    return p.parse_args(argv)


def _bench_binary(a: argparse.Namespace) -> str | None:
    if a.backend == "python":
        return None
    found = a.llama_bench or shutil.which("llama-bench")
    if a.backend == "llama-bench" and not found:
        fail("llama-bench not found on PATH; install llama.cpp there or pass --llama-bench PATH", EXIT_MISSING_RUNTIME,
             "missing_runtime")
    return found


def run_llama_bench(binary: str, a: argparse.Namespace, prompts: list[int]) -> dict:
    base = [binary, "-m", a.model, "-t", str(a.threads), "-o", "json"]
    # load time: wall time of a minimal llama-bench process (1-token prompt, no timed repetitions to speak of)
    load = []
    for _ in range(min(3, a.repetitions)):
        t0 = time.perf_counter()
        r = subprocess.run(base + ["-p", "1", "-n", "0", "-r", "1", "--no-warmup"], capture_output=True, text=True)
        load.append(time.perf_counter() - t0)
        if r.returncode != 0:
            fail(f"llama-bench could not run {a.model}: {r.stderr.strip().splitlines()[-1:]}", EXIT_RUN_FAILED,
                 "run_failed")
    cmd = base + ["-p", ",".join(map(str, prompts)), "-n", str(a.gen), "-r", str(a.repetitions)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"llama-bench failed: {r.stderr.strip().splitlines()[-1:]}", EXIT_RUN_FAILED, "run_failed")
    rows = json.loads(r.stdout)
    tests = []
    for row in rows:
        name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        tests.append({"name": name, **{k: row[k] for k in ("n_prompt", "n_gen", "avg_ns", "stddev_ns", "avg_ts",
                                                          "stddev_ts", "samples_ns", "samples_ts")}})
    first = rows[0]
    pp = next((t for t in tests if t["n_prompt"] == prompts[0]), None)
    tg = next((t for t in tests if t["n_gen"]), None)
    ttft = None
    if pp and tg:  # llama-bench does not time the first token itself: prefill + one decode step, per sample
        step = tg["avg_ns"] / tg["n_gen"]
        ttft = stats([(ns + step) / 1e6 for ns in pp["samples_ns"]])
    return {"backend": "llama-bench", "command": " ".join(cmd), "build_commit": first.get("build_commit"),
            "build_number": first.get("build_number"), "cpu_info": first.get("cpu_info"),
            "model_type": first.get("model_type"), "model_size": first.get("model_size"),
            "model_n_params": first.get("model_n_params"), "n_threads": first.get("n_threads"),
            "n_batch": first.get("n_batch"), "type_k": first.get("type_k"), "load_s": stats(load),
            "ttft_ms": ttft, "ttft_method": "pp avg_ns + one tg step (derived from llama-bench)",
            "peak_rss_bytes": peak_rss_bytes(children=True), "tests": tests}


def run_python(a: argparse.Namespace, prompts: list[int]) -> dict:
    try:
        import llama_cpp
    except ImportError:
        fail("neither llama-bench nor llama-cpp-python is installed on the target: put llama-bench on PATH or "
             "pip install llama-cpp-python there", EXIT_MISSING_RUNTIME, "missing_runtime")
    n_ctx = a.ctx or max(prompts + [0]) + a.gen
    n_batch = max(prompts + [1])
    global _QUIET  # the ctypes callback must outlive every llama.cpp call
    _QUIET = llama_cpp.llama_log_callback(lambda *_: None)
    llama_cpp.llama_log_set(_QUIET, None)  # quiet C logging
    loads, llm = [], None
    for _ in range(max(1, min(3, a.repetitions))):
        del llm
        t0 = time.perf_counter()
        try:
            llm = llama_cpp.Llama(model_path=a.model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                  n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
        except (ValueError, RuntimeError) as exc:
            fail(f"llama.cpp could not load {a.model}: {exc}", EXIT_RUN_FAILED, "run_failed")
        loads.append(time.perf_counter() - t0)
    n_vocab, bos = llm.n_vocab(), llm.token_bos()
    rng = random.Random(0)

    def tokens(n: int) -> list[int]:
        return [bos if bos >= 0 else rng.randrange(n_vocab)] + [rng.randrange(n_vocab) for _ in range(n - 1)]

    def prefill(n: int) -> float:
        toks = tokens(n)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        return time.perf_counter() - t0

    def generate(n: int) -> float:
        llm.reset()
        t0 = time.perf_counter()
        for tok in tokens(n):
            llm.eval([tok])
        return time.perf_counter() - t0

    def first_token(n: int) -> float:
        import numpy as np

        toks = tokens(n)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))))  # greedy first token
        return time.perf_counter() - t0

    tests = []
    for n in prompts:
        prefill(n)  # warm-up, as llama-bench
        tests.append(timing_test(f"pp{n}", n, 0, [prefill(n) for _ in range(a.repetitions)]))
    if a.gen:
        generate(1)
        tests.append(timing_test(f"tg{a.gen}", 0, a.gen, [generate(a.gen) for _ in range(a.repetitions)]))
    ttft = stats([first_token(prompts[0]) * 1e3 for _ in range(a.repetitions)]) if prompts else None
    return {"backend": "llama-cpp-python", "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
            "model_n_params": llm.n_params() if hasattr(llm, "n_params") else None,
            "model_size": llama_cpp.llama_model_size(llm.model), "n_threads": a.threads, "n_batch": n_batch,
            "n_ctx": n_ctx, "type_k": "f16", "load_s": stats(loads), "ttft_ms": ttft,
            "ttft_method": "prefill of the first prompt + greedy choice of the first token",
            "peak_rss_bytes": peak_rss_bytes(), "tests": tests}


def main(argv: list[str] | None = None) -> None:
    a = _args(argv)
    if not os.path.isfile(a.model):
        fail(f"{a.model}: no such file on the target", EXIT_RUN_FAILED, "run_failed")
    prompts = [int(x) for x in a.prompt.split(",") if x.strip() and int(x) > 0]
    binary = _bench_binary(a)
    record = run_llama_bench(binary, a, prompts) if binary else run_python(a, prompts)
    emit({"runner": "llama.cpp", "model_filename": os.path.basename(a.model),
          "artifact_bytes": os.path.getsize(a.model), "repetitions": a.repetitions, **record})


if __name__ == "__main__":
    main()
