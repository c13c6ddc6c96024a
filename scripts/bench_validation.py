"""Measure what GGUF validation sees on correct files; writes benchmarks/results/validation.json.

The gates of export.validate (GATES: per --type, llama.cpp against torch running the file's own
values: max relative |dlogit|, mean KL, top-1 agreement) and of export.gguf.blockcheck
(BLOCK_LIMIT: the worst block per tensor type against the model's weights) are set from these
numbers with the margins stated beside them (proposed_gates(), printed at the end of a run, is the
rule); tests/export/test_validation_gates.py checks that every gate keeps its margin over the
measured worst case.

Rows: every --type of export.gguf.types for each model (the zoo's SmolLM2 and gemma3, and the tiny
random models the tests export: their gates must hold there too), written with `--method rtn` and, for the
quantized types, with llama.cpp's quantizer given an importance matrix (only that for Q2_K_S,
which llama.cpp quantizes only with one; 8192 tokens of TinyStories + tiny Shakespeare,
compress.calib.collect): the two ways a user's file is made. Each row is a correct file, measured
with validate_gguf(gates=False) on export.validate's validation text; the quality cost against
the float model (top1_agreement, mean_kl) is reported beside. ONNX int8 / int4 exports (`--onnx`):
their gate is against the float model (export.onnx.validate.QUANT_LIMITS), so those rows set it.
Resumable: rows are kept in build/bench_validation/rows-v2.json.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import REPO, SHARED_DATA, write_result  # noqa: E402

MODELS = ("smollm2-135m-instruct", "gemma3-270m")   # + TINY (--models tiny-...)
CALIB = ["tinystories_train_head.txt.gz", "tiny_shakespeare.txt.gz"]
CALIB_TOKENS = 8192


TINY = ("tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-llama3", "tiny-wide-llama")


def _load(model: str, work: Path):
    """A zoo model, or one of the tiny random models the tests export (tests/conftest.py), saved
    and loaded back as a user's HF directory is."""
    from compress.checkpoint import load, save

    if not model.startswith("tiny-"):
        return load(model)
    from tests import conftest

    if not (work / "hf" / "config.json").is_file():
        save(getattr(conftest, model.replace("-", "_"))(), work / "hf")
    return load(work / "hf")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _imatrix(ckpt):
    from compress.calib import calibration_windows, collect
    from export.gguf.calibrated import imatrix_names
    from export.gguf.imatrix import from_stats

    files = [SHARED_DATA / "text" / f for f in CALIB]
    windows, source = calibration_windows(ckpt.model, ckpt.tokenizer, files, CALIB_TOKENS, 512)
    stats = collect(ckpt.model, windows, source=source)
    im = from_stats(stats, imatrix_names(ckpt), [source], 512)
    return {n: im.values(n) for n in im.sums}


def measure(ckpt, gtype: str, method: str, work: Path, state: dict) -> dict:
    from export.gguf import types as gtypes
    from export.gguf.quantize import llama_quantize
    from export.gguf.writer import export_gguf, write_native
    from export.validate import validate_gguf

    out = work / f"{gtype}-{method}.gguf"
    start = time.perf_counter()
    if method == "rtn":
        export_gguf(ckpt, out, gtype, validate=False)
    else:
        if "imatrix" not in state:
            state["imatrix"] = _imatrix(ckpt)
        f32 = work / "f32.gguf"
        if not f32.is_file():
            write_native(ckpt, f32, gtypes.parse("F32"))
        llama_quantize(f32, out, gtypes.parse(gtype), imatrix=state["imatrix"])
    made = time.perf_counter() - start
    rep = validate_gguf(out, ckpt, gtype, gates=False)
    out.unlink()
    st = rep["stored"]
    row = {"type": gtype, "method": method, "top1_agreement": round(rep["top1_agreement"], 4),
           "mean_kl": round(rep["mean_kl"], 6), "n_tokens": rep["n_tokens"],
           "stored_max_rel_diff": round(st["max_rel_diff"], 6), "stored_mean_kl": round(st["mean_kl"], 7),
           "stored_top1": round(st["top1_agreement"], 4),
           "block_max_rel": {t: round(b["max_rel"], 6) for t, b in rep["blocks"].items()},
           "block_worst": {t: b["worst"] for t, b in rep["blocks"].items()},
           "make_seconds": round(made, 1), "validate_seconds": round(time.perf_counter() - start - made, 1)}
    return row


def measure_onnx(ckpt, precision: str, work: Path) -> dict:
    from export.onnx.export import export_onnx
    from export.onnx.validate import validate_onnx

    out = work / f"onnx-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    export_onnx(ckpt, out, precision, validate=False)
    made = time.perf_counter() - start
    rep = validate_onnx(out, ckpt, precision, gates=False)
    shutil.rmtree(out, ignore_errors=True)
    return {"format": "onnx", "precision": precision, "top1_agreement": round(rep["top1_agreement"], 4),
            "mean_kl": round(rep["mean_kl"], 6), "n_tokens": rep["n_tokens"],
            "kv_max_abs_diff": round(rep["kv_cache"]["max_abs_diff"], 5), "make_seconds": round(made, 1),
            "validate_seconds": round(time.perf_counter() - start - made, 1)}


def worst(rows: list[dict]) -> dict:
    """Per --type: the worst of llama.cpp against the file's values over models and methods; per
    tensor type: the worst block."""
    gates: dict[str, dict] = {}
    blocks: dict[str, float] = {}
    onnx: dict[str, dict] = {}
    for r in rows:
        if r.get("format") == "onnx":
            o = onnx.setdefault(r["precision"], {"max_kl": 0.0, "min_top1": 1.0})
            o["max_kl"] = max(o["max_kl"], r["mean_kl"])
            o["min_top1"] = min(o["min_top1"], r["top1_agreement"])
            continue
        g = gates.setdefault(r["type"], {"max_rel_diff": 0.0, "max_kl": 0.0, "min_top1": 1.0})
        g["max_rel_diff"] = max(g["max_rel_diff"], r["stored_max_rel_diff"])
        g["max_kl"] = max(g["max_kl"], r["stored_mean_kl"])
        g["min_top1"] = min(g["min_top1"], r["stored_top1"])
        for k, v in r["block_max_rel"].items():
            blocks[k] = max(blocks.get(k, 0.0), v)
    return {"gates": gates, "block_max_rel": blocks, "onnx": onnx}


MARGIN = 1.5   # export.validate.GATE_MARGIN


def _up(x: float, digits: int = 2) -> float:
    """x rounded up to `digits` significant digits."""
    if x <= 0:
        return x
    e = math.floor(math.log10(x)) - digits + 1
    return round(math.ceil(x / 10 ** e - 1e-9) * 10 ** e, max(-e, 0))


def proposed_gates(w: dict) -> dict:
    """The gate constants the worst values imply (how GATES, BLOCK_LIMIT and QUANT_LIMITS were set):
    1.5x the worst, top-1 1 - 1.5 (1 - worst) floored at 0 (at most 0.99 for GGUF); block limits
    1.2x where 1.5x would reach 1 and for the ternary types."""
    def top(worst: float, cap: float) -> float:
        return max(math.floor((1 - max((1 - worst) * MARGIN, 1 - cap)) * 1000) / 1000, 0.0)
    gates = {t: {"max_rel_diff": _up(max(g["max_rel_diff"] * MARGIN, 1e-4)), "max_kl": _up(max(g["max_kl"] * MARGIN, 1e-5)),
                 "min_top1": top(g["min_top1"], 0.99)} for t, g in w["gates"].items()}
    blocks = {t: max(_up(v * (1.2 if t.startswith("TQ") or v * MARGIN >= 0.99 else MARGIN)), 1e-6)
              for t, v in sorted(w["block_max_rel"].items())}
    onnx = {p: {"max_kl": _up(g["max_kl"] * MARGIN), "min_top1": top(g["min_top1"], 1.0)} for p, g in w["onnx"].items()}
    return {"GATES": gates, "BLOCK_LIMIT": blocks, "QUANT_LIMITS": onnx}


def main() -> None:
    from export.gguf import types as gtypes
    from export.gguf.quantize import NEEDS_IMATRIX

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--types", nargs="+", default=list(gtypes.ALL_TYPES))
    ap.add_argument("--methods", nargs="+", default=["rtn", "imatrix"], choices=["rtn", "imatrix"],
                    help="which files to make (rows already measured are kept whatever this says)")
    ap.add_argument("--onnx", nargs="*", default=["int8", "int4"], help="ONNX precisions to measure")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench_validation")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rows_path = a.work / "rows-v2.json"   # v2: the file's own values as the reference
    rows: dict[str, dict] = json.loads(rows_path.read_text()) if rows_path.is_file() else {}
    for model in a.models:
        ckpt, state = None, {}
        (a.work / model).mkdir(parents=True, exist_ok=True)
        for gtype in a.types:
            for method in (() if gtype in NEEDS_IMATRIX else ("rtn",)) + \
                    (() if gtype in gtypes.FLOAT_TYPES or model.startswith("tiny-") else ("imatrix",)):
                key = f"{model}/{gtype}/{method}"
                if key in rows or method not in a.methods:
                    continue
                ckpt = ckpt or _load(model, a.work / model)
                work = a.work / model
                work.mkdir(exist_ok=True)
                rows[key] = {"model": model, **measure(ckpt, gtype, method, work, state)}
                rows_path.write_text(json.dumps(rows, indent=1))
                _log(f"{key}: {rows[key]}")
        for precision in a.onnx:
            key = f"{model}/onnx/{precision}"
            if key not in rows:
                ckpt = ckpt or _load(model, a.work / model)
                rows[key] = {"model": model, **measure_onnx(ckpt, precision, a.work / model)}
                rows_path.write_text(json.dumps(rows, indent=1))
                _log(f"{key}: {rows[key]}")
        (a.work / model / "f32.gguf").unlink(missing_ok=True)
    measured = [rows[key] for key in rows if key.split("/")[0] in a.models and
                (key.split("/")[1] in a.types or key.split("/")[1:] in [["onnx", p] for p in a.onnx])]
    print(json.dumps(proposed_gates(worst(measured)), indent=1))   # compare with the constants in the code
    path = write_result("validation", {
        "models": a.models, "types": a.types, "methods": ["rtn", "imatrix (llama.cpp's quantizer)"],
        "imatrix_calibration": f"{CALIB_TOKENS} tokens of {' + '.join(CALIB)}",
        "text": "export.validate.VALIDATION_TEXT (255 tokens)", "worst": worst(measured), "rows": measured})
    _log(f"wrote {path}")


if __name__ == "__main__":
    main()
