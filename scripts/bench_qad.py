"""Quantization-aware distillation benchmark -> benchmarks/results/qad.json.

Model smollm2-135m-instruct (the bundled Q4_1 GGUF, dequantized to float32 by slimkit). Every
perplexity is llama.cpp's on a GGUF file, WikiText-2 (v1, tokenized) validation, 16 windows of 512
(the protocol of `slimkit eval` and of the distillation benchmark):
  ppl_fp          the model at F16
  ppl_ptq_q4_0    post-training Q4_0 by `slimkit export gguf --type Q4_0` (bit-identical to llama.cpp's
                  quantizer; token embedding/output Q8_0, the mix the QAD student trains in)
  ppl_ptq_q4_k_m  llama.cpp's own Q4_K_M (llama_model_quantize)
  ppl_qad_q4_0    `slimkit qat --plan q4_0`: the full-precision model teaches its fake-quantized Q4_0
                  copy (forward KL) on the distillation benchmark's training text (TinyStories train
                  head + tiny Shakespeare), then `slimkit export gguf` writes the trained blocks
recovery = (ppl_ptq_q4_0 - ppl_qad_q4_0) / (ppl_ptq_q4_0 - ppl_fp).

Training is a `slimkit qat ... --resume` subprocess checkpointing every few steps, so an
interrupted benchmark continues where it stopped when started again.

    .venv/bin/python scripts/bench_qad.py [--tokens 131072] [--lr 5e-5] [--learn-scales] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import SHARED_DATA, write_result  # noqa: E402

SOURCE = "smollm2-135m-instruct"
TRAIN = ["tinystories_train_head.txt.gz", "tiny_shakespeare.txt.gz"]
EVAL = SHARED_DATA / "text" / "wikitext2_v1_tokenized_valid.txt.gz"


def _slimkit(*args: str) -> float:
    cmd = [str(Path(sys.executable).parent / "slimkit"), *args]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def _ppl(path: Path, windows: int) -> float:
    from compress.evaluate import read_text
    from export.runtime import gguf_perplexity

    ppl = gguf_perplexity(path, read_text(EVAL), ctx=512, max_chunks=windows).ppl
    print(f"{path.name}: ppl {ppl:.4f}", flush=True)
    return round(ppl, 4)


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=131072, help="QAD training budget")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--learn-scales", action="store_true")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path("build/bench_qad"))
    args = ap.parse_args()
    for f in [EVAL, *(SHARED_DATA / "text" / t for t in TRAIN)]:
        if not f.is_file():
            sys.exit(f"bench_qad: {f} is missing (needs ../shared/data)")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # llama.cpp on a shared machine (see BENCHMARKS.md)

    files = {"fp": work / "model-F16.gguf", "ptq_q4_0": work / "model-Q4_0.gguf",
             "ptq_q4_k_m": work / "model-Q4_K_M.gguf", "qad_q4_0": work / "qad-Q4_0.gguf"}
    for key, gtype in (("fp", "F16"), ("ptq_q4_0", "Q4_0"), ("ptq_q4_k_m", "Q4_K_M")):
        if not files[key].is_file():
            _slimkit("export", "gguf", SOURCE, "-o", str(files[key]), "--type", gtype)

    qad_dir = work / "qad"
    train = [
        SOURCE, "--plan", "q4_0", "-o", str(qad_dir), "--data", *(str(SHARED_DATA / "text" / t) for t in TRAIN),
        "--tokens", str(args.tokens), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--seed", "0", "--save-every", "8", "--precision", "fp32",
        *(["--learn-scales"] if args.learn_scales else []),
    ]
    train_seconds = None
    if not (qad_dir / "slimkit.json").is_file():
        train_seconds = round(_slimkit("qat", *train, "--resume"), 1)
    if not files["qad_q4_0"].is_file():
        _slimkit("export", "gguf", str(qad_dir), "-o", str(files["qad_q4_0"]))  # the trained blocks

    ppl = {key: _ppl(path, args.windows) for key, path in files.items()}
    recovery = (ppl["ptq_q4_0"] - ppl["qad_q4_0"]) / (ppl["ptq_q4_0"] - ppl["fp"])
    validation = json.loads((files["qad_q4_0"].with_name(files["qad_q4_0"].name + ".validation.json")).read_text())
    history = json.loads((qad_dir / "slimkit.json").read_text())
    write_result("qad", {
        "model": SOURCE, "tokens": args.tokens,
        "ppl_fp": ppl["fp"], "ppl_ptq_q4_0": ppl["ptq_q4_0"], "ppl_ptq_q4_k_m": ppl["ptq_q4_k_m"],
        "ppl_qad_q4_0": ppl["qad_q4_0"], "recovery": round(recovery, 4),
        "file_mb": {key: _mb(path) for key, path in files.items()},
        "training": {"command": "slimkit qat " + " ".join(train), "seconds": train_seconds,
                     "final_eval": history["stages"][-1]["metrics"]},
        "qad_export_validation": {k: validation[k] for k in ("max_abs_diff", "top1_agreement", "mean_kl",
                                                                 "tolerance", "passed")},
        "protocol": {"eval_text": EVAL.name, "windows": args.windows, "ctx": 512, "runtime": "llama.cpp",
                     "train_text": TRAIN, "teacher": f"{SOURCE} (float32, dequantized from its Q4_1 GGUF)"},
        "load_avg": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
