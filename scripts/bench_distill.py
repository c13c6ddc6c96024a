"""Distillation benchmark -> benchmarks/results/distill.json.

Protocol (issue 17): student = smollm2-135m-instruct with 25% of its non-embedding parameters
removed by `slimkit prune` (the method of prune.json's best recovered row, with its least-squares
recovery); teacher = smollm2-135m-instruct; train on TinyStories (train head) + tiny Shakespeare
(the teacher-corpus variant: `slimkit corpus` text instead); evaluate perplexity on WikiText-2 (v1,
tokenized) validation, 16 windows of 512 (compress.evaluate). Every variant gets the same token
budget (--tokens, 204800 by default) and the same optimizer settings:
  ce                    cross-entropy on the data only (no teacher)
  kd_fkl, kd_rkl        forward / reverse KL from the offline top-k logit cache (k = 64)
  kd_fkl_feature        forward KL + hidden-state MSE (online teacher)
  kd_sampled            forward KL from K = 130 sampled teacher tokens (equal bytes to top-64)
  blockwise_then_kd     --blockwise-tokens 16384, then kd_fkl
  kd_teacher_corpus     kd_fkl on a 2x-budget corpus sampled from the teacher by `slimkit corpus`

Throughput (same trainer, same batch, loss and settings; each mode in its own subprocess so its
peak RSS is its own): online (teacher forward every step) against cached (the top-k logit cache,
teacher never loaded); the cache build of the timed windows is timed on its own, and the number
of epochs after which building the cache pays is reported. CPU settings: bf16 autocast against
fp32, and 1 against 2 threads, on the cached mode; the chunked output head + loss (--head-chunk 128,
256) against the whole window, on the cached bf16 mode. Medians over timed steps after a warm-up.

Every training run is a `slimkit distill ... --resume` subprocess checkpointing every few steps,
so an interrupted benchmark continues where it stopped (finished variants are skipped); the
result file is written after each variant, with the variants still to run listed in `not_run`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
SAMPLED_K = 130          # 2 * 64 + 2: the bytes per token of the top-64 cache (uint16 ids vs ids + fp16 + lse)
BLOCKWISE_TOKENS = 16384
VARIANTS = {  # name -> extra `slimkit distill` options ({cache}: the variant's logit-cache directory)
    "ce": ["--ce-weight", "1"],
    "kd_fkl": ["--teacher", TEACHER, "--loss", "fkl", "--logit-cache", "{cache}"],
    "kd_rkl": ["--teacher", TEACHER, "--loss", "rkl", "--logit-cache", "{cache}"],
    "kd_fkl_feature": ["--teacher", TEACHER, "--loss", "fkl", "--feature-loss", "mse", "--feature-weight", "1"],
    "kd_sampled": ["--teacher", TEACHER, "--loss", "fkl", "--logit-cache", "{cache}",
                   "--sampled-logits", str(SAMPLED_K)],
    "blockwise_then_kd": ["--teacher", TEACHER, "--loss", "fkl", "--logit-cache", "{cache}",
                          "--blockwise-tokens", str(BLOCKWISE_TOKENS)],
    "kd_teacher_corpus": ["--teacher", TEACHER, "--loss", "fkl", "--logit-cache", "{corpus_cache}"],
}
KD = [v for v in VARIANTS if v != "ce"]


def _slimkit(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "slimkit"), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def best_prune_row() -> dict:
    path = RESULTS / "prune.json"
    if not path.is_file():
        sys.exit(f"{path} is missing: run scripts/bench_prune.py first (the student is pruned with its best method)")
    m = json.loads(path.read_text())["metrics"]
    return m.get("ppl_25_recovered_row") or {"method": "block-influence", "recover": "ls"}


def train_args(a: argparse.Namespace, student: str, data: list[str]) -> list[str]:
    return [student, "--data", *data, "--tokens", str(a.tokens), "--seq-len", str(a.seq_len),
            "--batch-size", str(a.batch_size), "--micro-batch", str(a.micro_batch), "--lr", str(a.lr),
            "--top-k", str(a.top_k), "--seed", "0"]


def perplexity(source: str, windows: int = 16) -> float:
    from compress.checkpoint import load
    from compress.evaluate import read_text, torch_perplexity

    model, tok = load(source)
    return torch_perplexity(model, tok, read_text(SHARED_DATA / "text" / EVAL), ctx=512, max_chunks=windows).ppl


# ---- throughput workers (subprocesses: `bench_distill.py --worker MODE ...`) ----------------------

def _tp_config(a: argparse.Namespace, cached: bool, precision: str = "fp32", head_chunk: int = 0):
    from compress.distill.config import DistillConfig

    return DistillConfig(tokens=(a.steps + 1) * a.tp_batch * a.seq_len, seq_len=a.seq_len, batch_size=a.tp_batch,
                         micro_batch=a.tp_batch, lr=a.lr, top_k=a.top_k, eval_windows=1, precision=precision,
                         logit_cache=str(a.work / "tp_cache") if cached else None, head_chunk=head_chunk)


def worker(a: argparse.Namespace, mode: str) -> dict:
    """One trainer run of the throughput protocol; MODE online | cached | build | bf16 | threads1 |
    bf16_chunkN (bf16, output head and loss N positions at a time)."""
    import torch

    from compress.distill.teachers import TeacherSpec
    from compress.distill.trainer import distill

    torch.set_num_threads(1 if mode == "threads1" else a.threads)
    out = a.work / f"tp_{mode}_{os.getpid()}"
    stamps: list[float] = []
    losses: list[float] = []
    cfg = _tp_config(a, cached=mode != "online", precision="bf16" if mode.startswith("bf16") else "fp32",
                     head_chunk=int(mode.split("_chunk")[1]) if "_chunk" in mode else 0)
    start = time.perf_counter()

    def cb(step, m):
        stamps.append(time.perf_counter())
        losses.append(m["loss"])
    res = distill(a.student, [TeacherSpec(TEACHER)], out, cfg, data=[str(SHARED_DATA / "text" / f) for f in TRAIN],
                  progress=False, callback=cb)
    total = time.perf_counter() - start
    history = json.loads((out / "slimkit.json").read_text())["stages"][-1]["metrics"]
    for p in (out, out.parent / f"{out.name}.state"):
        shutil.rmtree(p, ignore_errors=True)
    return {"step_s": [stamps[i + 1] - stamps[i] for i in range(len(stamps) - 1)], "losses": losses,
            "seconds": total, "teachers_loaded": history.get("teachers_loaded"), "threads": torch.get_num_threads(),
            "tokens_per_step": cfg.tokens_per_step, "steps": res.steps}


def run_worker(a: argparse.Namespace, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--student", a.student, "--work", str(a.work),
           "--steps", str(a.steps), "--tp-batch", str(a.tp_batch), "--seq-len", str(a.seq_len),
           "--top-k", str(a.top_k), "--lr", str(a.lr), "--threads", str(a.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def throughput(a: argparse.Namespace) -> dict:
    shutil.rmtree(a.work / "tp_cache", ignore_errors=True)
    build = run_worker(a, "build")    # builds the cache of the timed windows (its time is the build's + a run's)
    samples: dict[str, list] = {m: [] for m in ("online", "cached", "bf16", "threads1")}
    for _ in range(a.rounds):
        for mode in samples:
            samples[mode].append(run_worker(a, mode))
            print(mode, {k: v for k, v in samples[mode][-1].items() if k != "losses"}, flush=True)
    tokens = build["tokens_per_step"]

    def tok_s(mode: str) -> float:
        return round(tokens / statistics.median(s for r in samples[mode] for s in r["step_s"]), 1)
    res = {"tokens_per_s_online": tok_s("online"), "tokens_per_s_cached": tok_s("cached"),
           "tokens_per_s_cached_bf16": tok_s("bf16"), "tokens_per_s_cached_1_thread": tok_s("threads1"),
           "peak_rss_mb_online": round(max(r["peak_rss_mb"] for r in samples["online"]), 1),
           "peak_rss_mb_cached": round(max(r["peak_rss_mb"] for r in samples["cached"]), 1),
           "teachers_loaded_cached": samples["cached"][0]["teachers_loaded"]}
    res["throughput_ratio"] = round(res["tokens_per_s_cached"] / res["tokens_per_s_online"], 3)
    res["bf16_speedup"] = round(res["tokens_per_s_cached_bf16"] / res["tokens_per_s_cached"], 3)
    res["threads_2_over_1"] = round(res["tokens_per_s_cached"] / res["tokens_per_s_cached_1_thread"], 3)
    fp32, bf16 = samples["cached"][0]["losses"], samples["bf16"][0]["losses"]
    res["bf16_loss_rel_diff"] = round(max(abs(x - y) / abs(x) for x, y in zip(fp32, bf16)), 5)
    # the build: the build run's wall time less a cached run's (same steps, cache present)
    cached_wall = statistics.median(r["seconds"] for r in samples["cached"])
    build_s = max(build["seconds"] - cached_wall, 0.0)
    res["cache_build_seconds"] = round(build_s, 1)
    build_tokens = build["steps"] * tokens
    saved_per_token = 1 / res["tokens_per_s_online"] - 1 / res["tokens_per_s_cached"]
    res["cache_build_tokens"] = build_tokens
    res["break_even_epochs"] = round(build_s / build_tokens / saved_per_token, 2) if saved_per_token > 0 else None
    return res


HEAD_CHUNKS = (128, 256)


def head_chunk(a: argparse.Namespace) -> dict:
    """The chunked output head + loss against the whole window, on the cached bf16 mode (the CPU
    default), interleaved rounds; the same steps, so the losses are compared step by step."""
    if not (a.work / "tp_cache").is_dir():
        run_worker(a, "build")
    modes = ["bf16"] + [f"bf16_chunk{c}" for c in HEAD_CHUNKS]
    samples: dict[str, list] = {m: [] for m in modes}
    for _ in range(a.rounds):
        for mode in modes:
            samples[mode].append(run_worker(a, mode))
            print(mode, {k: v for k, v in samples[mode][-1].items() if k != "losses"}, flush=True)
    tokens = samples["bf16"][0]["tokens_per_step"]
    res: dict = {}
    label = {m: "head_whole" if m == "bf16" else m.replace("bf16_chunk", "head_chunk") for m in modes}
    for mode in modes:
        step = statistics.median(s for r in samples[mode] for s in r["step_s"])
        res[f"tokens_per_s_{label[mode]}"] = round(tokens / step, 1)
        res[f"peak_rss_mb_{label[mode]}"] = round(max(r["peak_rss_mb"] for r in samples[mode]), 1)
        if mode != "bf16":
            ref, got = samples["bf16"][0]["losses"], samples[mode][0]["losses"]
            res[f"loss_rel_diff_{label[mode]}"] = round(max(abs(x - y) / abs(x) for x, y in zip(ref, got)), 6)
    best = max(HEAD_CHUNKS, key=lambda c: res[f"tokens_per_s_head_chunk{c}"])
    res["head_chunk_best"] = best
    res["head_chunk_speedup"] = round(res[f"tokens_per_s_head_chunk{best}"] / res["tokens_per_s_head_whole"], 3)
    res["head_chunk_rss_ratio"] = round(res[f"peak_rss_mb_head_chunk{best}"] / res["peak_rss_mb_head_whole"], 3)
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
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per throughput run")
    p.add_argument("--tp-batch", type=int, default=2, help="windows per step in the throughput runs")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the throughput runs "
                   "(the thread comparison runs the cached mode on 1 as well)")
    p.add_argument("--eval-windows", type=int, default=16, help="WikiText windows of 512 (the protocol: 16)")
    p.add_argument("--no-throughput", dest="throughput", action="store_false")
    p.add_argument("--smoke", action="store_true", help="print the metrics, write no result file")
    p.add_argument("--worker", choices=["online", "cached", "build", "bf16", "threads1"] +
                   [f"bf16_chunk{c}" for c in HEAD_CHUNKS], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        res = worker(a, a.worker)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps(res))
        return
    for f in TRAIN + [EVAL]:
        if not (SHARED_DATA / "text" / f).is_file():
            sys.exit(f"{SHARED_DATA / 'text' / f} is missing (../shared/data is needed for this benchmark)")
    a.work.mkdir(parents=True, exist_ok=True)
    row = None
    if a.student is None:
        row = best_prune_row()
        a.student = str(a.work / "student")
        if not (a.work / "student" / "slimkit.json").is_file():
            method = "minitron" if row["method"] == "search+ls" else row["method"]   # search+ls: the default path
            calib = "self" if row.get("calib") == "self" else str(SHARED_DATA / "text" / TRAIN[0])
            _slimkit("prune", TEACHER, "-o", a.student, "--target-params", "0.75", "--method", method,
                     "--recover", "ls" if row.get("recover", "ls").startswith("ls") else "none", "--calib", calib,
                     "--calib-tokens", "8192")   # prune.json's calibration budget
    if a.eval_windows != 16 or a.tokens < 200_000:
        a.smoke = True  # not the protocol: never written as the result
    run_all(a, row)


def _corpus(a: argparse.Namespace) -> str:
    """The teacher-written training text (2x the budget, so it is not repeated more than the other data)."""
    path = a.work / "teacher_corpus.txt"
    if not path.is_file():
        _slimkit("corpus", TEACHER, "-o", str(path), "--tokens", str(2 * a.tokens), "--seed", "0")
    return str(path)


THROUGHPUT_KEYS = ("tokens_per_s_online", "tokens_per_s_cached", "tokens_per_s_cached_bf16",
                   "tokens_per_s_cached_1_thread", "peak_rss_mb_online", "peak_rss_mb_cached", "teachers_loaded_cached",
                   "throughput_ratio", "bf16_speedup", "threads_2_over_1", "bf16_loss_rel_diff", "cache_build_seconds",
                   "cache_build_tokens", "break_even_epochs")


def earlier(a: argparse.Namespace) -> dict:
    """The measurements of the committed distill.json, for a work directory that is gone (a fresh
    checkout): each keeps the commit that measured it (`measured_at`), so a benchmark longer than one
    session is finished across sessions instead of restarted. Only a result of the same protocol
    (token budget, eval windows) is reused."""
    path = RESULTS / "distill.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    m, commit = doc["metrics"], doc.get("git_commit", "unknown")
    if m.get("tokens") != a.tokens or f"{a.eval_windows} x 512" not in m.get("eval_data", ""):
        return {}
    at = m.get("measured_at", {})
    done: dict = {"seconds": dict(m.get("variant_seconds", {})), "measured_at": {}}
    for key, metric in [("teacher", "teacher_ppl"), ("pruned", "ppl_pruned")] + [(v, f"ppl_{v}") for v in VARIANTS]:
        if metric in m:
            done[key] = m[metric]
            done["measured_at"][key] = at.get(key, commit)
    if "throughput_ratio" in m:
        done["throughput"] = {k: m[k] for k in THROUGHPUT_KEYS if k in m}
        done["measured_at"]["throughput"] = at.get("throughput", commit)
    if "head_chunk_speedup" in m:
        done["head_chunk"] = {k: v for k, v in m.items() if "head_" in k}
        done["measured_at"]["head_chunk"] = at.get("head_chunk", commit)
    return done


def run_all(a: argparse.Namespace, row: dict | None) -> dict:
    ppl_path = a.work / "ppl.json"  # finished measurements, so a restarted benchmark skips them
    done = json.loads(ppl_path.read_text()) if ppl_path.is_file() else ({} if a.smoke else earlier(a))
    ppl_path.write_text(json.dumps(done, indent=2))

    def measure(key: str, source: str) -> float:
        if key not in done:
            done[key] = round(perplexity(source, a.eval_windows), 4)
            ppl_path.write_text(json.dumps(done, indent=2))
        return done[key]

    m: dict = {"tokens": a.tokens, "teacher_ppl": measure("teacher", TEACHER), "ppl_pruned": measure("pruned", a.student)}
    if a.throughput and "throughput" not in done:   # first: it is short, and it decides the CPU precision
        done["throughput"] = throughput(a)
        ppl_path.write_text(json.dumps(done, indent=2))
    m.update(done.get("throughput", {}))
    if a.throughput and "head_chunk" not in done:
        done["head_chunk"] = head_chunk(a)
        ppl_path.write_text(json.dumps(done, indent=2))
    m.update(done.get("head_chunk", {}))
    _write(a, m, row)
    data = [str(SHARED_DATA / "text" / f) for f in TRAIN]
    seconds = done.setdefault("seconds", {})
    m.update({f"ppl_{v}": done[v] for v in VARIANTS if v in done})   # measured earlier: kept whatever --variants
    for name in a.variants:
        out = a.work / name
        if name not in done and not (out / "slimkit.json").is_file():
            t0 = time.perf_counter()
            extra = [x.format(cache=a.work / "cache", corpus_cache=a.work / "corpus_cache") for x in VARIANTS[name]]
            _slimkit("distill", *train_args(a, a.student, [_corpus(a)] if name == "kd_teacher_corpus" else data),
                     *extra, "-o", str(out), "--save-every", "5", "--resume")
            seconds[name] = round(time.perf_counter() - t0, 1)
        m[f"ppl_{name}"] = measure(name, str(out))
        _write(a, m, row)
    return _write(a, m, row)


def _write(a: argparse.Namespace, m: dict, row: dict | None) -> dict:
    kd = {k: m[f"ppl_{k}"] for k in KD if f"ppl_{k}" in m}
    gap = m["ppl_pruned"] - m["teacher_ppl"]
    if kd and gap:
        best = min(kd, key=kd.get)
        m["recovered_fraction_kd"] = round((m["ppl_pruned"] - kd[best]) / gap, 4)
        m["best_kd_variant"] = best
    measured_at = json.loads((a.work / "ppl.json").read_text()).get("measured_at", {})
    not_run = [v for v in VARIANTS if f"ppl_{v}" not in m] + ([] if "throughput_ratio" in m else ["throughput"]) + \
        ([] if "head_chunk_speedup" in m else ["head_chunk"])
    out = {**m, **({"measured_at": measured_at} if measured_at else {}), "not_run": not_run,
           "student": f"{TEACHER} pruned 25% non-embedding ({row['method']}, recover {row.get('recover')}, "
                      f"calibration {row.get('calib', 'tinystories')})"
           if row else a.student, "teacher": TEACHER, "train_data": " + ".join(TRAIN),
           "eval_data": f"{EVAL}, {a.eval_windows} x 512",
           "protocol": f"precision auto (bf16 autocast on a CPU with native bf16), seq_len {a.seq_len}, "
                       f"{a.batch_size} windows/step (micro-batch {a.micro_batch}), AdamW lr "
                       f"{a.lr}, warmup 5% + cosine, T=1, top-k {a.top_k}, sampled K {SAMPLED_K}, block-wise "
                       f"{BLOCKWISE_TOKENS} tokens; throughput: {a.steps} timed steps of {a.tp_batch} x {a.seq_len} "
                       f"tokens, {a.rounds} rounds, medians",
           "variant_seconds": json.loads((a.work / "ppl.json").read_text()).get("seconds", {}),
           "loadavg": list(os.getloadavg())}
    print(json.dumps({k: v for k, v in out.items() if k.startswith(("ppl", "tokens", "recovered"))}), flush=True)
    if not a.smoke:
        write_result("distill", out)
    return out


if __name__ == "__main__":
    main()
