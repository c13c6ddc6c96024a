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
  ppl_step0_from_gptq   with `--init gptq+imatrix`: step 0 of QAD, the GPTQ blocks of the q4_0 plan
                  (calibrated on 8192 tokens of the same training text), exported before any training
  ppl_qad_q4_0_from_gptq   QAD that starts from those blocks (`slimkit qat --init gptq+imatrix`)
recovery = (ppl_ptq_q4_0 - ppl_qad) / (ppl_ptq_q4_0 - ppl_fp), per initialisation
(`recovery` for rtn, `recovery_from_gptq` for the GPTQ start).

Training is a `slimkit qat ... --resume` subprocess checkpointing every few steps, so an
interrupted benchmark continues where it stopped when started again.

    .venv/bin/python scripts/bench_qad.py [--tokens 163840] [--inits rtn gptq+imatrix] [--lr 5e-5] [--work DIR]
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


# result-key suffix per QAD starting point (the keys: ppl_qad_q4_0_from_gptq, recovery_from_gptq)
SUFFIX = {"rtn": "", "gptq+imatrix": "_from_gptq", "gptq": "_from_gptq_reference_scales", "imatrix": "_from_imatrix"}


def _train(init: str, work: Path, args: argparse.Namespace) -> tuple[Path, list[str], float | None]:
    """QAD from `init` (resumable); returns (checkpoint dir, the qat arguments, training seconds)."""
    out = work / ("qad" if init == "rtn" else f"qad-{init.replace('+', '_')}")
    calib = ["--init", init, *(a for t in TRAIN for a in ("--calib", str(SHARED_DATA / "text" / t))),
             "--calib-tokens", str(args.calib_tokens)] if init != "rtn" else []
    train = [
        SOURCE, "--plan", "q4_0", "-o", str(out), "--data", *(str(SHARED_DATA / "text" / t) for t in TRAIN),
        "--tokens", str(args.tokens), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--seed", "0", "--save-every", "8", "--precision", "fp32", *calib,
        *(["--learn-scales"] if args.learn_scales else []),
    ]
    seconds = None
    if not (out / "slimkit.json").is_file():
        seconds = round(_slimkit("qat", *train, "--resume"), 1)
    return out, train, seconds


def _step0(init: str, work: Path, args: argparse.Namespace) -> Path:
    """The q4_0 plan's blocks from `init` before any training (QAD's step 0), as a GGUF."""
    path = work / f"{init.replace('+', '_')}-Q4_0-step0.gguf"
    if not path.is_file():
        from compress.checkpoint import load, save
        from compress.quant.calibrated import calibrated_init
        from compress.quant.plans import QATPlan
        from export.gguf.writer import export_gguf

        plan = QATPlan("q4_0", init=init, calib=tuple(str(SHARED_DATA / "text" / t) for t in TRAIN),
                       calib_tokens=args.calib_tokens)
        ckpt = load(SOURCE)
        ckpt.quant = calibrated_init(ckpt.model, ckpt.tokenizer, plan)
        ckpt.quant.plan = plan.to_dict()
        save(ckpt, work / "step0")
        export_gguf(work / "step0", path)  # the blocks as they are
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=163840, help="QAD training budget")
    ap.add_argument("--inits", nargs="+", default=["gptq+imatrix"], help="QAD starting points to train "
                    "(rtn, imatrix, gptq, gptq+imatrix)")
    ap.add_argument("--calib-tokens", type=int, default=8192)
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
             "ptq_q4_k_m": work / "model-Q4_K_M.gguf"}
    for key, gtype in (("fp", "F16"), ("ptq_q4_0", "Q4_0"), ("ptq_q4_k_m", "Q4_K_M")):
        if not files[key].is_file():
            _slimkit("export", "gguf", SOURCE, "-o", str(files[key]), "--type", gtype)
    training = {}
    for init in args.inits:
        suffix = SUFFIX[init]
        if init != "rtn":
            files[f"step0{suffix}"] = _step0(init, work, args)
        out, train, seconds = _train(init, work, args)
        files[f"qad_q4_0{suffix}"] = work / f"{out.name}-Q4_0.gguf"
        if not files[f"qad_q4_0{suffix}"].is_file():
            _slimkit("export", "gguf", str(out), "-o", str(files[f"qad_q4_0{suffix}"]))  # the trained blocks
        history = json.loads((out / "slimkit.json").read_text())
        validation = json.loads(files[f"qad_q4_0{suffix}"].with_name(files[f"qad_q4_0{suffix}"].name
                                                                    + ".validation.json").read_text())
        training[init] = {"command": "slimkit qat " + " ".join(train), "seconds": seconds,
                          "final_eval": history["stages"][-1]["metrics"],
                          "export_validation": {k: validation[k] for k in ("max_abs_diff", "top1_agreement",
                                                                          "mean_kl", "tolerance", "passed")}}

    ppl = {key: _ppl(path, args.windows) for key, path in files.items()}
    metrics = {"model": SOURCE, "tokens": args.tokens, "inits": args.inits,
               **{f"ppl_{k}": v for k, v in ppl.items()}}
    for init in args.inits:
        suffix = SUFFIX[init]
        key = "recovery" if init == "rtn" else f"recovery{suffix}"
        metrics[key] = round((ppl["ptq_q4_0"] - ppl[f"qad_q4_0{suffix}"]) / (ppl["ptq_q4_0"] - ppl["fp"]), 4)
        if init != "rtn":
            metrics[f"recovery_step0{suffix}"] = round((ppl["ptq_q4_0"] - ppl[f"step0{suffix}"])
                                                       / (ppl["ptq_q4_0"] - ppl["fp"]), 4)
    metrics["ppl_fp_ratio_best"] = round(min(v for k, v in ppl.items() if k.startswith("qad")) / ppl["fp"], 4)
    write_result("qad", {
        **metrics, "file_mb": {key: _mb(path) for key, path in files.items()}, "training": training,
        "protocol": {"eval_text": EVAL.name, "windows": args.windows, "ctx": 512, "runtime": "llama.cpp",
                     "train_text": TRAIN, "calib_tokens": args.calib_tokens,
                     "teacher": f"{SOURCE} (float32, dequantized from its Q4_1 GGUF)"},
        "load_avg": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
