"""Distillation benchmark -> benchmarks/results/distill.json.

Protocol (issue 4): student = smollm2-135m-instruct with 25% of its non-embedding parameters
removed by `slimkit prune` with the best method of benchmarks/results/prune.json; teacher =
smollm2-135m-instruct; train on TinyStories (train head) + tiny Shakespeare; evaluate perplexity
on WikiText-2 (v1, tokenized) validation, 16 windows of 512 (compress.evaluate). Every variant
gets the same token budget: cross-entropy only, KD forward KL, KD reverse KL (both from the
offline top-k logit cache), KD forward KL + hidden-state MSE (online teacher).

Throughput: each mode runs in its own subprocess (so peak RSS is its own), alternating
naive / slimkit for --rounds rounds; tokens/s is the median over timed optimizer steps after
one warm-up step, peak RSS the largest ru_maxrss seen. naive = online teacher and full-vocabulary
forward KL written the straightforward way; slimkit = the trainer with the cached top-k logits.

Every training run is a `slimkit distill ... --resume` subprocess checkpointing every few steps,
so an interrupted benchmark continues where it stopped when started again (finished variants
are skipped). Nothing is written to benchmarks/results until every number is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import REPO, RESULTS, SHARED_DATA, write_result  # noqa: E402

TEACHER = "smollm2-135m-instruct"
TRAIN = ["tinystories_train_head.txt.gz", "tiny_shakespeare.txt.gz"]
EVAL = "wikitext2_v1_tokenized_valid.txt.gz"
VARIANTS = {  # name -> extra `slimkit distill` options
    "ce": ["--ce-weight", "1"],
    "kd_fkl": ["--teacher", TEACHER, "--loss", "fkl", "--logit-cache", "{cache}"],
    "kd_rkl": ["--teacher", TEACHER, "--loss", "rkl", "--logit-cache", "{cache}"],
    "kd_fkl_feature": ["--teacher", TEACHER, "--loss", "fkl", "--feature-loss", "mse", "--feature-weight", "1"],
}


def _slimkit(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "slimkit"), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def best_prune_method() -> str:
    path = RESULTS / "prune.json"
    if not path.is_file():
        sys.exit(f"{path} is missing: run scripts/bench_prune.py first (the student is pruned with its best method)")
    rows = [r for r in json.loads(path.read_text())["metrics"]["rows"] if abs(r["removed_fraction"] - 0.25) < 1e-6]
    return min(rows, key=lambda r: r["ppl"])["method"]


def train_args(a: argparse.Namespace, student: str) -> list[str]:
    return [student, "--data", *(str(SHARED_DATA / "text" / f) for f in TRAIN), "--tokens", str(a.tokens),
            "--seq-len", str(a.seq_len), "--batch-size", str(a.batch_size), "--micro-batch", str(a.micro_batch),
            "--lr", str(a.lr), "--top-k", str(a.top_k), "--seed", "0"]


def perplexity(source: str, windows: int = 16) -> float:
    from compress.checkpoint import load
    from compress.evaluate import read_text, torch_perplexity

    model, tok = load(source)
    return torch_perplexity(model, tok, read_text(SHARED_DATA / "text" / EVAL), ctx=512, max_chunks=windows).ppl


# ---- throughput workers (run as subprocesses: `bench_distill.py --worker naive|slimkit ...`) ----

def _windows(a: argparse.Namespace, tokenizer):
    from compress.data import load_corpus
    from compress.distill.trainer import training_windows

    corpus = load_corpus([SHARED_DATA / "text" / f for f in TRAIN], tokenizer, a.seq_len, 0.05, 0)
    return training_windows(corpus, _tp_config(a))


def _tp_config(a: argparse.Namespace):
    from compress.distill.config import DistillConfig

    return DistillConfig(tokens=(a.steps + 1) * a.tp_batch * a.seq_len, seq_len=a.seq_len, batch_size=a.tp_batch,
                         micro_batch=a.tp_batch, lr=a.lr, top_k=a.top_k, logit_cache=str(a.work / "tp_cache"),
                         eval_windows=1, precision="fp32")


def worker_naive(a: argparse.Namespace) -> list[float]:
    """Online teacher + full-vocabulary KL written the straightforward way."""
    import torch

    from compress.checkpoint import load
    from compress.distill.trainer import micro_positions, window_order

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    student, tok = load(a.student)
    student, teacher = student.to(device), load(TEACHER).model.to(device).eval()
    student.train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cfg = _tp_config(a)
    windows = _windows(a, tok)
    opt = torch.optim.AdamW(student.parameters(), lr=a.lr, betas=(0.9, 0.95))
    stamps = [time.perf_counter()]
    for step in range(a.steps + 1):
        ids = windows[window_order(micro_positions(step, 0, 0, 1, cfg), windows.shape[0], cfg.seed)].to(device)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits[:, :-1]
        s_logits = student(input_ids=ids).logits[:, :-1]
        p_t = torch.softmax(t_logits, dim=-1)
        loss = (p_t * (torch.log(p_t) - torch.log_softmax(s_logits, dim=-1))).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return [stamps[i + 1] - stamps[i] for i in range(1, a.steps + 1)]  # step 0 is the warm-up


def worker_slimkit(a: argparse.Namespace) -> list[float]:
    """The trainer itself (cached top-k logits, no teacher in memory), timed step by step."""
    import shutil

    from compress.distill.teachers import TeacherSpec
    from compress.distill.trainer import distill

    out = a.work / f"tp_slimkit_{os.getpid()}"
    stamps: list[float] = []
    shutil.rmtree(out.parent / f"{out.name}.state", ignore_errors=True)
    distill(a.student, [TeacherSpec(TEACHER)], out, _tp_config(a), data=[SHARED_DATA / "text" / f for f in TRAIN],
            progress=False, callback=lambda step, _m: stamps.append(time.perf_counter()))
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f"{out.name}.state", ignore_errors=True)
    return [stamps[i + 1] - stamps[i] for i in range(a.steps)]  # the first step (warm-up) has no start stamp


def run_worker(a: argparse.Namespace, mode: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", mode, "--student", a.student, "--work", str(a.work),
           "--steps", str(a.steps), "--tp-batch", str(a.tp_batch), "--seq-len", str(a.seq_len),
           "--top-k", str(a.top_k), "--lr", str(a.lr)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def throughput(a: argparse.Namespace) -> dict[str, float]:
    run_worker(a, "slimkit")  # builds the logit cache of the timed windows once, untimed
    samples: dict[str, list] = {"naive": [], "slimkit": []}
    for _ in range(a.rounds):
        for mode in ("naive", "slimkit"):
            samples[mode].append(run_worker(a, mode))
            print(mode, samples[mode][-1], flush=True)
    tokens = a.tp_batch * a.seq_len
    res = {}
    for mode, runs in samples.items():
        res[f"tokens_per_s_{mode}"] = round(tokens / statistics.median(s for r in runs for s in r["step_s"]), 1)
        res[f"peak_rss_mb_{mode}"] = round(max(r["peak_rss_mb"] for r in runs), 1)
    res["throughput_ratio"] = round(res["tokens_per_s_slimkit"] / res["tokens_per_s_naive"], 3)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=204_800, help="training budget of every variant (>= 200k)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--work", type=Path, default=REPO / "build" / "bench_distill")
    p.add_argument("--student", default=None, help="use this checkpoint instead of pruning (development only)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per throughput run")
    p.add_argument("--tp-batch", type=int, default=2, help="windows per step in the throughput runs")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--eval-windows", type=int, default=16, help="WikiText windows of 512 (the protocol: 16)")
    p.add_argument("--smoke", action="store_true", help="print the metrics, write no result file")
    p.add_argument("--worker", choices=["naive", "slimkit"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        step_s = (worker_naive if a.worker == "naive" else worker_slimkit)(a)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({"step_s": step_s, "peak_rss_mb": rss}))
        return
    for f in TRAIN + [EVAL]:
        if not (SHARED_DATA / "text" / f).is_file():
            sys.exit(f"{SHARED_DATA / 'text' / f} is missing (../shared/data is needed for this benchmark)")
    a.work.mkdir(parents=True, exist_ok=True)
    method = None
    if a.student is None:
        method = best_prune_method()
        a.student = str(a.work / "student")
        if not (a.work / "student" / "slimkit.json").is_file():
            _slimkit("prune", TEACHER, "-o", a.student, "--target-params", "0.75", "--method", method,
                     "--calib", str(SHARED_DATA / "text" / TRAIN[0]))  # calibrate on the training text
    metrics = run_all(a)
    metrics.update(student=f"{TEACHER} pruned 25% non-embedding ({method})" if method else a.student,
                   teacher=TEACHER, prune_method=method, train_data=" + ".join(TRAIN), eval_data=f"{EVAL}, 16 x 512",
                   protocol=f"seq_len {a.seq_len}, {a.batch_size} windows/step, AdamW lr {a.lr} warmup 5% + cosine, "
                            f"T=1, top-k {a.top_k}; throughput: {a.steps} timed steps of {a.tp_batch} x {a.seq_len} "
                            f"tokens, {a.rounds} alternating rounds, medians",
                   loadavg=list(os.getloadavg()))
    print(json.dumps(metrics, indent=2))
    if a.eval_windows != 16 or a.tokens < 200_000:
        a.smoke = True  # not the protocol: never written as the result
    if not a.smoke:
        print(write_result("distill", metrics))


def run_all(a: argparse.Namespace) -> dict:
    ppl_path = a.work / "ppl.json"  # finished measurements, so a restarted benchmark skips them
    done = json.loads(ppl_path.read_text()) if ppl_path.is_file() else {}

    def measure(key: str, source: str) -> float:
        if key not in done:
            done[key] = perplexity(source, a.eval_windows)
            ppl_path.write_text(json.dumps(done, indent=2))
        return done[key]

    m = {"tokens": a.tokens, "teacher_ppl": measure("teacher", TEACHER), "ppl_pruned": measure("pruned", a.student)}
    for name, extra in VARIANTS.items():
        out = a.work / name
        if not (out / "slimkit.json").is_file():
            _slimkit("distill", *train_args(a, a.student), *(x.format(cache=a.work / "cache") for x in extra),
                     "-o", str(out), "--save-every", "5", "--resume")
        m[f"ppl_{name}"] = measure(name, str(out))
    best = min(m["ppl_kd_fkl"], m["ppl_kd_rkl"], m["ppl_kd_fkl_feature"])
    gap = m["ppl_pruned"] - m["teacher_ppl"]  # zero only with a dense stand-in student
    m["recovered_fraction_kd"] = round((m["ppl_pruned"] - best) / gap, 4) if gap else None
    m.update(throughput(a))
    return m


if __name__ == "__main__":
    main()
