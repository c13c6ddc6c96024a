"""Peer runner: Intel's AutoRound (PyPI `auto-round`) quantizing a HF checkpoint to GGUF.

The quantization benchmark compares slimkit's GGUF Q4_0 / Q4_K_M files with AutoRound's, made from
the same HF directory and judged by the same llama.cpp perplexity. AutoRound lives in its own
virtualenv (build/autoround-venv) and runs as a subprocess, so its pins (transformers, datasets,
gguf) never touch the project's venv. This file is both sides: the parent (stdlib only, imported
by the benchmark) and the child (`python peer_autoround.py _child SPEC.json`, run by the venv's
interpreter), which imports auto_round.

Usage from the benchmark:
    from peer_autoround import quantize_with_autoround
    info = quantize_with_autoround(hf_dir, calib, "q4_k_m", out, work=tmp)   # RuntimeError if it cannot run
CLI:
    python scripts/peer_autoround.py HF_DIR CALIB.txt.gz q4_k_m OUT.gguf [--iters N ...]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "build" / "autoround-venv"
AUTOROUND_VERSION = "0.16.1"
# torch==2.13.0 is the one spec that takes the local CPU wheel on our machines; any other spec
# pulls gigabytes of CUDA packages, so torch goes in first and stays pinned by a constraints file.
TORCH_SPEC = "torch==2.13.0"
# AutoRound's GGUF writer imports gguf-py (it asks for a recent one) and sentencepiece.
PACKAGES = (f"auto-round=={AUTOROUND_VERSION}", "gguf==0.19.0", "sentencepiece==0.2.3")
STAMP = VENV / ".slimkit-installed"
SCHEMES = {"q4_0": "gguf:q4_0", "q4_k_m": "gguf:q4_k_m"}

# Defaults, measured on our machines (2 shared cores, 1 thread, SmolLM2-135M, 30 blocks): see
# quantize_with_autoround's docstring for the numbers and why.
DEFAULT_ITERS = 16
DEFAULT_NSAMPLES = 32
DEFAULT_SEQLEN = 256
DEFAULT_BATCH_SIZE = 4
CHILD_TIMEOUT_S = 3600  # a hung child must not hang the benchmark


def _fail(msg: str) -> RuntimeError:
    return RuntimeError(" ".join(str(msg).split()))  # one line, whatever the cause printed


def _pip(py: Path, args: list[str], log: Path) -> None:
    cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln]
        raise _fail(f"AutoRound venv: `pip install {' '.join(args)}` failed (exit {rc}): "
                    f"{lines[-1] if lines else 'see ' + str(log)}")


def ensure_venv(venv: Path = VENV) -> Path:
    """Create build/autoround-venv with torch (CPU) and auto-round once; return its python."""
    py = venv / "bin" / "python"
    stamp = venv / STAMP.name
    want = "\n".join((TORCH_SPEC, *PACKAGES))
    if py.is_file() and stamp.is_file() and stamp.read_text() == want:
        return py
    base = shutil.which("python3.11")
    if base is None:
        raise _fail("AutoRound venv: python3.11 is not on PATH (needed to create build/autoround-venv)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / "autoround-install.log"
    if not py.is_file():
        rc = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
        if rc.returncode != 0:
            raise _fail(f"AutoRound venv: `python3.11 -m venv {venv}` failed: {rc.stderr.strip()[-300:]}")
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH_SPEC + "\n")
    _pip(py, [TORCH_SPEC], log)
    _pip(py, ["-c", str(constraints), *PACKAGES], log)
    stamp.write_text(want)
    return py


def quantize_with_autoround(hf_dir: Path, calib_text: Path, scheme: str, out_gguf: Path, *, work: Path,
                            iters: int = DEFAULT_ITERS, nsamples: int = DEFAULT_NSAMPLES,
                            seqlen: int = DEFAULT_SEQLEN, threads: int = 1,
                            batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Any]:
    """Quantize the HF checkpoint at hf_dir with AutoRound (SignRound tuning) into out_gguf.

    scheme 'q4_0' -> AutoRound's 'gguf:q4_0', 'q4_k_m' -> 'gguf:q4_k_m' (its scheme and export
    format both). Calibration: the local text file calib_text (.txt or .txt.gz) only, tokenized with
    hf_dir's tokenizer, concatenated and cut into the first `nsamples` chunks of exactly `seqlen`
    tokens, handed to AutoRound as a list of token tensors (so its dataset loader, which falls back
    to downloading fineweb-edu on any error, is never used). The child runs with HF_HUB_OFFLINE=1,
    TRANSFORMERS_OFFLINE=1, HF_DATASETS_OFFLINE=1, on CPU, `threads` torch threads.

    Default settings: iters=16 SignRound steps per block, batch_size=4 x seqlen=256 tokens per
    step, nsamples=32 (8192 calibration tokens), lr = AutoRound's default 1/iters, torch.compile
    off (not measured: compiling each block on 2 shared cores is unlikely to pay back 16 steps). Why: AutoRound's
    own recipes (default 200 iters x 8 x 2048 tokens, "light" 50 iters x 8 x 2048) cost hours on
    one core. Measured on SmolLM2-135M, 1 thread, nice 19, on a 2-core machine under load 3-5:
    50 iters x 4 x 512 tokens took 144 s for one of the 30 blocks (~72 min a scheme); 20 x 4 x 256
    took ~37 s a block (~18 min); the defaults took 1053 s end to end for q4_0 and 1488 s for
    q4_k_m (that one ran beside another AutoRound job). Each block also has a fixed cost of a few
    seconds (fp reference outputs, best-MSE restore, packing). llama.cpp perplexity, wikitext-2
    ctx 512, 16 windows: q4_0 24.14, q4_k_m 20.94 (F16 19.75, llama.cpp RTN q4_0 22.9, q4_k_m 20.5);
    iters=0 (AutoRound's "opt-RTN", which it recommends for GGUF) gave q4_0 21.81. AutoRound's GGUF
    export keeps token_embd (tied with the output) at Q8_0, and for q4_k_m falls back, like
    llama.cpp, to Q5_0/Q8_0 for rows of 576 (not a multiple of 256): most of that file is Q5_0.

    Returns {"seconds": wall time of the child (load, calibrate, tune, export), "settings": {...},
    "autoround_version": ..., "file_mb": ...}. Raises RuntimeError (one line) when it cannot run.
    """
    if scheme not in SCHEMES:
        raise _fail(f"unknown scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    hf_dir, calib_text = Path(hf_dir).resolve(), Path(calib_text).resolve()
    out_gguf, work = Path(out_gguf).resolve(), Path(work).resolve()
    if not (hf_dir / "config.json").is_file():
        raise _fail(f"{hf_dir} is not a HF checkpoint directory (no config.json)")
    if not calib_text.is_file():
        raise _fail(f"calibration text {calib_text} does not exist")
    for name, value in (("iters", iters), ("nsamples", nsamples), ("seqlen", seqlen), ("threads", threads),
                        ("batch_size", batch_size)):
        if value < (0 if name == "iters" else 1):
            raise _fail(f"{name} must be positive, got {value}")
    py = ensure_venv()
    work.mkdir(parents=True, exist_ok=True)
    spec = {"hf_dir": str(hf_dir), "calib_text": str(calib_text), "scheme": scheme,
            "format": SCHEMES[scheme], "out_dir": str(work / f"autoround-{scheme}"),
            "result": str(work / f"autoround-{scheme}.json"), "iters": iters,
            "nsamples": nsamples, "seqlen": seqlen, "threads": threads, "batch_size": batch_size}
    spec_path = work / f"autoround-{scheme}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    Path(spec["result"]).unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(work / "hf-home"),
           "AR_DISABLE_DATASET_SUBPROCESS": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    log = work / f"autoround-{scheme}.log"
    t0 = time.perf_counter()
    try:
        with open(log, "w") as fh:
            rc = subprocess.run([str(py), str(Path(__file__).resolve()), "_child", str(spec_path)], env=env,
                                stdout=fh, stderr=subprocess.STDOUT, cwd=work, timeout=CHILD_TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        raise _fail(f"AutoRound {scheme} did not finish within {CHILD_TIMEOUT_S} s (log: {log})") from None
    seconds = time.perf_counter() - t0
    result_path = Path(spec["result"])
    if rc < 0:
        raise _fail(f"AutoRound {scheme} was killed by signal {-rc} after {seconds:.0f} s (log: {log})")
    if rc != 0 or not result_path.is_file():
        raise _fail(f"AutoRound {scheme} failed (exit {rc}): {_last_error(log)} (log: {log})")
    result = json.loads(result_path.read_text())
    produced = Path(result["gguf"])
    out_gguf.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(produced), str(out_gguf))
    return {"seconds": round(seconds, 1), "settings": result["settings"],
            "autoround_version": result["autoround_version"],
            "file_mb": round(out_gguf.stat().st_size / 2**20, 2)}


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):  # the exception line of a traceback, else the last line
        if ln.split(":", 1)[0].endswith(("Error", "Exception", "Exit")):
            return ln[-400:]
    return lines[-1][-400:] if lines else "no output"


# ---------------------------------------------------------------------------------------------
# child side: runs inside build/autoround-venv


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8")


def _calib_chunks(tokenizer: Any, text: str, nsamples: int, seqlen: int) -> list[Any]:
    """First `nsamples` windows of exactly `seqlen` tokens of the text, each a [1, seqlen] tensor."""
    import torch

    need = nsamples * seqlen
    ids: list[int] = []
    for para in text.split("\n\n"):  # tokenize piecewise, stop once enough tokens are in
        ids.extend(tokenizer(para + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= need:
            break
    n = min(nsamples, len(ids) // seqlen)
    if n == 0:
        raise SystemExit(f"RuntimeError: calibration text has {len(ids)} tokens, fewer than seqlen={seqlen}")
    flat = torch.tensor(ids[:n * seqlen], dtype=torch.long)
    return list(flat.view(n, 1, seqlen))  # n x [1, seqlen]


def _child(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    import auto_round
    from auto_round import AutoRound
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["hf_dir"])
    chunks = _calib_chunks(tokenizer, _read_text(Path(spec["calib_text"])), spec["nsamples"], spec["seqlen"])
    bs = min(spec["batch_size"], len(chunks))
    settings = {"scheme": spec["format"], "iters": spec["iters"], "nsamples": len(chunks),
                "seqlen": spec["seqlen"], "batch_size": bs, "lr": None if spec["iters"] == 0 else 1.0 / spec["iters"],
                "threads": spec["threads"], "device": "cpu", "enable_torch_compile": False,
                "calib_text": Path(spec["calib_text"]).name, "calib_tokens": len(chunks) * spec["seqlen"]}
    out_dir = Path(spec["out_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    t0 = time.perf_counter()
    ar = AutoRound(spec["hf_dir"], tokenizer=tokenizer, scheme=spec["format"], dataset=chunks,
                   iters=spec["iters"], nsamples=len(chunks), seqlen=spec["seqlen"], batch_size=bs,
                   device_map="cpu", enable_torch_compile=False, seed=42)
    ar.quantize_and_save(output_dir=str(out_dir), format=spec["format"])
    settings["quantize_seconds"] = round(time.perf_counter() - t0, 1)
    ggufs = sorted(out_dir.rglob("*.gguf"), key=lambda p: p.stat().st_size, reverse=True)
    if not ggufs:
        raise SystemExit(f"RuntimeError: AutoRound wrote no .gguf under {out_dir}")
    Path(spec["result"]).write_text(json.dumps({"gguf": str(ggufs[0]), "settings": settings,
                                                "autoround_version": auto_round.__version__}, indent=2))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        _child(Path(argv[1]))
        return 0
    p = argparse.ArgumentParser(description="Quantize a HF checkpoint to GGUF with AutoRound (peer runner).")
    p.add_argument("hf_dir", type=Path)
    p.add_argument("calib_text", type=Path, help=".txt or .txt.gz calibration text (local)")
    p.add_argument("scheme", choices=sorted(SCHEMES))
    p.add_argument("out_gguf", type=Path)
    p.add_argument("--work", type=Path, default=REPO / "build" / "autoround-work")
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    p.add_argument("--nsamples", type=int, default=DEFAULT_NSAMPLES)
    p.add_argument("--seqlen", type=int, default=DEFAULT_SEQLEN)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    try:
        info = quantize_with_autoround(a.hf_dir, a.calib_text, a.scheme, a.out_gguf, work=a.work, iters=a.iters,
                                       nsamples=a.nsamples, seqlen=a.seqlen, threads=a.threads,
                                       batch_size=a.batch_size)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
