"""Statistics and output shared by the runner scripts (pushed to the target beside them; stdlib only)."""
from __future__ import annotations

import json
import math
import resource
import sys


def stats(samples: list[float]) -> dict:
    """mean, sample standard deviation and the samples themselves."""
    n = len(samples)
    mean = sum(samples) / n if n else float("nan")
    std = math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1)) if n > 1 else 0.0
    return {"avg": mean, "stddev": std, "samples": samples}


def timing_test(name: str, n_prompt: int, n_gen: int, seconds: list[float]) -> dict:
    """One test in llama-bench's JSON shape: nanoseconds per repetition and tokens/s."""
    ns = [int(s * 1e9) for s in seconds]
    ts = [(n_prompt + n_gen) * 1e9 / x for x in ns]  # as llama-bench: from the integer nanoseconds
    t, n = stats(ts), stats([float(x) for x in ns])
    return {"name": name, "n_prompt": n_prompt, "n_gen": n_gen, "avg_ns": int(n["avg"]), "stddev_ns": int(n["stddev"]),
            "avg_ts": t["avg"], "stddev_ts": t["stddev"], "samples_ns": ns, "samples_ts": ts}


def peak_rss_bytes(children: bool = False) -> int:
    """Peak resident set size of this process (or of its finished children).

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own memory map. Not
    ru_maxrss: it carries over exec() the RSS of the process that forked us (a large benchmark driver).
    Elsewhere ru_maxrss (KiB on Linux/Android, bytes on macOS)."""
    if not children:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss
    return int(usage if sys.platform == "darwin" else usage * 1024)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def fail(message: str, code: int, kind: str) -> None:
    emit({"error": message, "error_kind": kind})
    sys.exit(code)
