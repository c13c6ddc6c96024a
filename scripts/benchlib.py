"""Helpers shared by the bench_*.py scripts: machine description and result files."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"


def machine() -> dict[str, Any]:
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.processor():
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    # the same "AMD EPYC" model name has come with and without AVX-512 / BF16 (sessions differ): record which
    vector = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    info = {"platform": platform.platform(), "cpu": cpu, "cpu_vector_flags": vector, "cores": os.cpu_count(),
            "memory_gb": mem_gb, "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("torch", "transformers", "gguf", "llama-cpp-python"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return info


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(name: str, metrics: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, **provenance(), "metrics": metrics}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def provenance() -> dict[str, Any]:
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
            "command": " ".join([Path(sys.executable).name] + sys.argv), "machine": machine()}


def write_section(name: str, keys: tuple[str, ...], metrics: dict[str, Any]) -> Path:
    """Merge `metrics`, with its own provenance (date, commit, command, machine), into
    `benchmarks/results/<name>.json` at metrics[keys[0]][keys[1]]...; the rest of the file, and its
    top-level provenance, stay as they were (a file is started when there is none)."""
    path = RESULTS / f"{name}.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"name": name, **provenance(), "metrics": {}}
    node = doc.setdefault("metrics", {})
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = {**metrics, **provenance()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def earlier_rows(name: str) -> tuple[str, list[dict[str, Any]]]:
    """The measured rows of the last `benchmarks/results/<name>.json` and the commit that measured
    them, for scripts whose work directory (their resume cache) is gone: such a row is reused, marked
    with `measured_at_commit`, instead of being measured again. ([], "") when there is no file."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return "", []
    doc = json.loads(path.read_text())
    rows = [r for r in doc.get("metrics", {}).get("rows", []) if "ppl" in r and "error" not in r]
    return doc.get("git_commit", "unknown"), rows
