"""The default run, measured -> benchmarks/results/default_run.json.

Runs `make run RUN_DIR=<dir>` from scratch (the default recipe, slimkit/recipes/default.yaml) and
reads its manifest: wall seconds per stage and in all; the student's parameters, file size and
perplexity, and the teacher's (SmolLM2-135M-Instruct at Q4_K_M) on the same text with the same
protocol (the recipe's eval stage: llama.cpp, WikiText-2 validation, 8 windows of 512); decode
tokens/s of both measured in the same run by the profile stage (llama.cpp on this host).

    .venv/bin/python scripts/bench_default_run.py [--run-dir build/default_run]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import REPO, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=REPO / "build" / "default_run")
    ap.add_argument("--reuse", action="store_true", help="read an existing finished run instead of running it")
    args = ap.parse_args()
    run_dir = args.run_dir.resolve()
    wall = None
    if not args.reuse:
        shutil.rmtree(run_dir, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(["make", "run", f"RUN_DIR={run_dir}"], cwd=REPO, check=True)
        wall = round(time.perf_counter() - start, 1)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    st = manifest["stages"]
    from devices.artifact import describe

    student, teacher = run_dir / st["student-gguf"]["output"], run_dir / st["teacher-gguf"]["output"]
    evals, prof = st["eval"]["metrics"], st["profile"]["metrics"]

    def decode(path: Path) -> float:
        return round(prof[f"{path}@local"]["summary"]["decode_tps"], 2)  # devices.profile.summarize

    s_tps, t_tps = decode(student), decode(teacher)
    write_result("default_run", {
        "recipe": manifest["recipe"], "run_dir": str(run_dir),
        "stage_seconds": {k: v.get("seconds") for k, v in st.items() if not k.startswith("_") and "seconds" in v},
        "wall_seconds": wall if wall is not None else manifest.get("wall_seconds"),
        "student_params": describe(student).n_params, "teacher_params": describe(teacher).n_params,
        "student_ppl": round(evals[str(student)]["ppl"], 4), "teacher_ppl": round(evals[str(teacher)]["ppl"], 4),
        "student_onnx_ppl": round(evals[str(run_dir / st["student-onnx"]["output"])]["ppl"], 4),
        "student_file_mb": round(student.stat().st_size / 1e6, 2), "teacher_file_mb": round(teacher.stat().st_size / 1e6, 2),
        "student_decode_tps": s_tps, "teacher_decode_tps": t_tps, "speedup": round(s_tps / t_tps, 3),
        "protocol": {"eval": evals[str(student)].get("text"), "windows": evals[str(student)].get("windows"),
                     "ctx": evals[str(student)].get("ctx"), "decode": "llama.cpp tg128 on this host, profile stage"},
        "load_avg": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
