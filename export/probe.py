"""Open an untrusted model file in a short child process before this process opens it.

llama.cpp (and, more rarely, ONNX Runtime) ends the whole process on some damaged files that
compress.gguf_file.check cannot foresee: a GGML_ASSERT or GGML_ABORT (SIGABRT), a read through a
bad pointer (SIGSEGV). For example a norm weight whose type field says I32 instead of F32 passes
every header check, loads, and aborts in the first decode (ggml's binary_op: unsupported types).
So before a file is first opened in this process, a child (this interpreter, `-c`) opens it with
the same runner code (export.runtime.LlamaRunner, export.onnx.runtime.OnnxRunner), tokenizes a
short text and decodes two tokens, under a wall-clock timeout and an address-space cap
(RLIMIT_AS, set by the child itself before it imports anything: a preexec_fn is not safe in a
process with threads, and torch's are always there). A child killed by a signal, out of time or
over the cap becomes one SlimkitError line naming the file, what happened and what to do; an
error the child raised is reported with the message the in-process call would have given.

Verdicts are memoized, with the runtime's version, in this process and in $SLIMKIT_CACHE/probe.json
(default ~/.cache/slimkit; the last MAX_CACHED verdicts), so a file is probed once across runs. A
GGUF's verdict is kept for the hash of its header (metadata and tensor table, everything before the
tensor data) and its size: what llama.cpp does with a file, abort included, is decided by the
header, while weight bytes only flow into arithmetic. So a copy or a renamed file (an export's
temporary file renamed into place) is not probed again, nor a file whose weights alone changed
(most fuzzed mutants), while any change to its header is. An ONNX export's verdict is kept for
the real path, size and mtime_ns of its decoder, external data and genai_config.json. Timeouts and
memory verdicts are not stored: they depend on the machine's load, not only on the file.

SLIMKIT_NO_PROBE=1 skips the probe (a crash in the runtime then ends the process, as before).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from compress import gguf_file, zoo
from compress.atomic import atomic_write
from compress.errors import SlimkitError
from export.onnx.layout import GENAI_CONFIG

PROBE_VERSION = 1  # part of every cache key: a change to the children below probes again
TIMEOUT_S = 60.0  # interpreter start, imports, load ...
TIMEOUT_S_PER_GB = 30.0  # ... and one decode, which reads every weight once (a cold file: from disk)
MEM_BASE = 4 << 30  # address space of the interpreter, numpy, the runtime's libraries, thread stacks
MEM_PER_FILE_BYTE = 2  # the file mapped once, plus the runtime's own copies (repacked or ONNX weights)
MAX_CACHED = 512  # files remembered in probe.json
DETAIL_CHARS = 160  # of the runtime's last stderr line, quoted in the message
MEMORY_SIGNS = ("MemoryError", "bad_alloc", "failed to allocate", "Cannot allocate memory")
ADVICE = "the file is damaged or not made for this runtime: download or export it again"
FILE = "<FILE>"  # stands for the file's path in a remembered message
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # where `export` and `compress` are importable from

# Every child starts here: argv = [cap_bytes, path]. The cap is set before any import.
PRELUDE = """\
import json, resource, sys
_cap = int(sys.argv[1])
_hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (_cap if _hard == resource.RLIM_INFINITY else min(_cap, _hard), _hard))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
def stage(name):
    print("stage", name, flush=True)
"""

# A runner child: open with slimkit's runner, run two tokens; report slimkit's error verbatim.
RUNNER_CHILD = """\
from compress.errors import SlimkitError
try:
    stage("loading")
{open}
    stage("running")
{run}
except SlimkitError as exc:
    print("error", json.dumps(str(exc)), flush=True)
    sys.exit(3)
except Exception as exc:
    print("exception", json.dumps([type(exc).__name__, (str(exc).splitlines() or [""])[0]]), flush=True)
    sys.exit(3)
"""

GGUF_CHILD = RUNNER_CHILD.format(
    open="    from export.runtime import LlamaRunner\n    r = LlamaRunner(sys.argv[2], n_ctx=64, threads=1)",
    run="    r.logits((r.tokenize('Hello, world') or [0])[:2])")
ONNX_CHILD = RUNNER_CHILD.format(
    open="    from export.onnx.runtime import OnnxRunner\n    r = OnnxRunner(sys.argv[2], threads=1)",
    run="    r.forward([0, 1])")

_verdicts: dict[str, str | None] = {}  # cache key -> None (loads) or the error message


def enabled() -> bool:
    return os.environ.get("SLIMKIT_NO_PROBE") != "1"


def probe_gguf(path: str | os.PathLike) -> None:
    """Raise SlimkitError if llama.cpp would end the process on this GGUF (checked by gguf_file.check)."""
    path = Path(path)
    if not enabled():
        return
    probe(path, "llama.cpp", GGUF_CHILD, identity=gguf_identity(path), version=_version("llama_cpp_python"))


def gguf_identity(path: Path) -> str:
    """sha256 of the header (everything before the tensor data) and the file's size."""
    info = gguf_file.read_info(path)
    if info.get("split.count", 1) != 1:  # llama.cpp reads the other parts by name: no sharing by header
        return file_identity(sorted(path.parent.glob("*.gguf")))
    start = min(t.offset for t in info.tensors) if info.tensors else path.stat().st_size
    with open(path, "rb") as f:
        return f"gguf-header {hashlib.sha256(f.read(start)).hexdigest()[:32]} size {path.stat().st_size}"


def probe_onnx(model_dir: str | os.PathLike, model: Path) -> None:
    """Raise SlimkitError if ONNX Runtime would end the process on this exported directory, whose
    decoder is `model` (its verdict is kept for the decoder, its external data and genai_config.json)."""
    model_dir = Path(model_dir)
    if not enabled():
        return
    files = sorted(f for f in model_dir.iterdir() if f.name.startswith(model.name) or f.name == GENAI_CONFIG)
    probe(model_dir, "ONNX Runtime", ONNX_CHILD, identity=file_identity(files), version=_version("onnxruntime"),
          size=sum(f.stat().st_size for f in files))


def probe(path: Path, runtime: str, child: str, *, identity: str | None = None, version: str = "",
          size: int | None = None, timeout_s: float | None = None, mem_bytes: int | None = None) -> None:
    """Run `child` (Python after PRELUDE; sys.argv[2] is `path`) once per `identity` (default: the
    file's path, size and mtime), remember the verdict and raise it as SlimkitError if it is one.
    `size` (default: the file's) scales the default time and memory caps."""
    if not enabled():
        return
    key = f"v{PROBE_VERSION} {runtime} {version} {identity or file_identity([path])}"
    if key not in _verdicts:
        stored = _read_cache()
        if key in stored:
            _verdicts[key] = stored[key]
        else:
            size = path.stat().st_size if size is None else size
            verdict, lasting = run_child(path, runtime, child, timeout_s or TIMEOUT_S + TIMEOUT_S_PER_GB * size / 1e9,
                                         mem_bytes or MEM_BASE + MEM_PER_FILE_BYTE * size)
            if not lasting:  # a timeout or memory verdict: not remembered
                raise SlimkitError(verdict)
            verdict = verdict and verdict.replace(str(path), FILE)  # shared by files of the same identity
            _write_cache(key, verdict)
            _verdicts[key] = verdict
    if _verdicts[key] is not None:
        raise SlimkitError(_verdicts[key].replace(FILE, str(path)))


def file_identity(files: Sequence[Path]) -> str:
    return ";".join(f"{os.path.realpath(f)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def run_child(path: Path, runtime: str, child: str, timeout_s: float, mem_bytes: int) -> tuple[str | None, bool]:
    """(None or the error message, whether the verdict depends only on the file)."""
    env = {**os.environ, "SLIMKIT_NO_PROBE": "1", "SLIMKIT_LLAMA_LOG": "1", "GGML_NO_BACKTRACE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                               os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-c", PRELUDE + child, str(mem_bytes), str(path)], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return (f"{runtime} did not finish {_stage(out)} {path} within {timeout_s:.0f} s (it hangs on this "
                "file, or the machine is very busy); check the file, or set SLIMKIT_NO_PROBE=1 to open it "
                "without this check"), False
    return read_child(proc.returncode, proc.stdout, proc.stderr, path, runtime, mem_bytes)


def read_child(rc: int, out: str, err: str, path: Path, runtime: str, mem_bytes: int) -> tuple[str | None, bool]:
    """Read a finished child: (None or the error message, whether the verdict depends only on the file)."""
    stage, raised = _stage(out), ""
    for line in out.splitlines():
        if line.startswith("error "):
            return json.loads(line[len("error "):]), True
        if line.startswith("exception "):
            name, text = json.loads(line[len("exception "):])
            if name != "MemoryError":
                return f"{runtime} failed while {stage} {path}: {name}: {text}; {ADVICE}", True
            raised = name
    if rc == 0:
        return None, True
    detail = _detail(err) or (f": {raised}" if raised else "")
    if raised or any(sign in err for sign in MEMORY_SIGNS):
        return (f"{runtime} ran out of memory while {stage} {path} (over the probe's cap of "
                f"{mem_bytes / 2**30:.1f} GiB{detail}); the file asks for more than its size explains: "
                "it is damaged, or set SLIMKIT_NO_PROBE=1 to open it without this check"), False
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        verb = "aborted" if name == "SIGABRT" else "crashed"
        return f"{runtime} {verb} ({name}) while {stage} {path}{detail}; {ADVICE}", name != "SIGKILL"
    return (f"{runtime} failed while {stage} {path} (exit {rc}{detail}); {ADVICE}, or set SLIMKIT_NO_PROBE=1 to "
            "open it without this check"), False


def _stage(out: str) -> str:
    stages = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("stage ")]
    return stages[-1] if stages else "starting to load"


def _detail(err: str) -> str:
    """': ' + the runtime's last stderr line without its `file.cpp:123: ` prefix, or ''."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    if not lines:
        return ""
    last = re.sub(r"^\S+:\d+: ", "", lines[-1])
    return ": " + (last if len(last) <= DETAIL_CHARS else last[:DETAIL_CHARS] + "...")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cache_file() -> Path:
    return zoo.cache_dir() / "probe.json"


def _read_cache() -> dict[str, str | None]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, verdict: str | None) -> None:
    """Remember a verdict on disk (best effort: a cache that cannot be written means probing again)."""
    stored = _read_cache()
    stored.pop(key, None)
    stored[key] = verdict
    for old in list(stored)[:-MAX_CACHED]:
        del stored[old]
    with contextlib.suppress(OSError):
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(_cache_file(), json.dumps(stored, indent=0).encode())
