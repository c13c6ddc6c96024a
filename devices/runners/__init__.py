"""Scripts that run ON the target (stdlib + their runtime only) and print one JSON record on stdout.

They are pushed as files and started with the target's python3, so they import nothing from slimkit.
Field names follow llama-bench's JSON output where it has one (n_prompt, n_gen, n_threads, avg_ns,
stddev_ns, avg_ts, stddev_ts, samples_ns, samples_ts, model_filename, model_size, build_commit).
"""
from __future__ import annotations

from pathlib import Path

RUNNERS_DIR = Path(__file__).parent
RUNNER_FILES = {"llama.cpp": RUNNERS_DIR / "run_llama.py", "onnxruntime": RUNNERS_DIR / "run_onnx.py"}
EXIT_MISSING_RUNTIME = 3  # the target lacks the runtime (llama-bench / llama_cpp / onnxruntime)
EXIT_RUN_FAILED = 4       # the runtime could not load or run the artifact
