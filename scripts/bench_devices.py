"""Measured vs predicted llama.cpp speed on this host; writes benchmarks/results/devices.json.

Artifacts (GGUF, made with `slimkit export gguf` / export.gguf.writer.export_gguf, no validation):
  smollm2-135m-instruct at F16, Q8_0, Q4_0, Q4_K_M          <- CALIBRATION set
  pruned student (25% of non-embedding parameters removed
    by `slimkit prune ... --target-params 0.75`) at F16, Q8_0, Q4_0, Q4_K_M   <- SCORED set
  gemma3-270m at Q8_0, Q4_0, Q4_K_M                          <- SCORED set
  depth probes: tiny random llamas (hidden 64, smollm2's vocabulary) with 8 and 32 layers at Q8_0,
    whose bytes are negligible: they calibrate the fixed per-layer decode time  <- CALIBRATION (decode only)
The predictor (devices.predict) is calibrated on the smollm2 artifacts and the depth probes only and scored
on the pruned student and gemma3-270m, model sizes and an architecture it has never seen.

Protocol on this shared 2-core machine: threads=2; `--rounds` interleaved rounds over all artifacts in a
shuffled order (so calibration and scored artifacts see the same background load), OpenMP threads
waiting passively (OMP_WAIT_POLICY=PASSIVE, see RUNNER_ENV), each run = the
devices runner (llama-bench's tests: pp128, pp512 from an empty cache, tg128) with `--repetitions` timed
repetitions after a warm-up; per artifact the median over all repetitions of all rounds. The host's
bandwidth / GEMM peak are probed once; the load average is recorded before and after every run.
measured_prefill_tps is pp512 (llama-bench's default prompt), measured_decode_tps is tg128.
Raw runs are kept in build/bench_devices/runs.json; `--rescore` recomputes the result from them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import REPO, RESULTS, SHARED_DATA, write_result  # noqa: E402

from devices import predict as P  # noqa: E402
from devices.artifact import describe  # noqa: E402
from devices.profile import measure  # noqa: E402
from devices.specs import DeviceSpec, load_profile, profile_names  # noqa: E402
from devices.transports import LocalTransport  # noqa: E402

WORK = REPO / "build" / "bench_devices"
TEACHER = "smollm2-135m-instruct"
PRUNE_RATIO = 0.75  # fraction of non-embedding parameters kept
TYPES = ("F16", "Q8_0", "Q4_0", "Q4_K_M")
GEMMA_TYPES = ("Q8_0", "Q4_0", "Q4_K_M")
PROBE_LAYERS = (8, 32)
THREADS = 2
CALIB_TEXT = SHARED_DATA / "text" / "tinystories_train_head.txt.gz"  # prune calibration (minitron etc.)
# llama-cpp-python's ggml uses OpenMP; its threads spin at every barrier by default, and on this CPU shared
# with other jobs a 2-thread decode then ran 5-10x slower and erratic (measured: tg32 3-23 tok/s default vs
# 58-83 passive, same minute). Passive waiting is what a shared host needs; it is recorded in the result.
RUNNER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def best_prune_method() -> str:
    """Lowest-perplexity method at 25% removed in benchmarks/results/prune.json (minitron when absent)."""
    path = RESULTS / "prune.json"
    if path.is_file():
        rows = [r for r in json.loads(path.read_text())["metrics"].get("rows", [])
                if abs(r.get("removed_fraction", 0) - 0.25) < 1e-6]
        if rows:
            return min(rows, key=lambda r: r["ppl"])["method"]
    return "minitron"


def pruned_student(stand_in: bool) -> tuple[str, dict]:
    out = WORK / "pruned-student"
    if (out / "config.json").is_file():
        return str(out), json.loads((WORK / "pruned-student.how.json").read_text())
    method = best_prune_method()
    argv = ["prune", TEACHER, "-o", str(out), "--target-params", str(PRUNE_RATIO), "--method", method]
    if method != "magnitude" and method != "random" and CALIB_TEXT.is_file():
        # speed depends on the pruned shape, not on how well it was chosen: a short calibration suffices
        argv += ["--calib", str(CALIB_TEXT), "--calib-tokens", "4096"]
    how = {"command": "slimkit " + " ".join(argv)}
    slimkit = str(Path(sys.executable).with_name("slimkit"))
    has_prune = subprocess.run([slimkit, "prune", "--help"], capture_output=True).returncode == 0
    if has_prune:
        subprocess.run([slimkit, *argv], check=True)
        how["made_by"] = f"slimkit prune --method {method}, {PRUNE_RATIO} of non-embedding parameters kept"
    elif stand_in:  # `slimkit prune` has not landed: the same parameter budget by dropping whole layers
        from compress.checkpoint import load, save

        ckpt = load(TEACHER)
        layers = ckpt.model.model.layers
        keep = round(len(layers) * PRUNE_RATIO)
        ckpt.model.model.layers = layers[:keep]
        ckpt.model.config.num_hidden_layers = keep
        save(ckpt, out, stage={"stage": "bench-stand-in-depth-prune", "config": {"keep_layers": keep}})
        how = {"command": "stand-in", "made_by": f"STAND-IN: first {keep} of {len(layers)} layers kept "
               "(slimkit prune was not available)"}
    else:
        raise SystemExit("slimkit prune is not available; pass --stand-in to benchmark a depth-pruned stand-in")
    (WORK / "pruned-student.how.json").write_text(json.dumps(how))
    return str(out), how


def depth_probe(layers: int) -> Path:
    """A tiny random llama with `layers` layers (hidden 64) and the teacher's vocabulary, at Q8_0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.checkpoint import Checkpoint, load
    from export.gguf.writer import export_gguf

    out = WORK / f"depth-probe-{layers}L.Q8_0.gguf"
    if not out.is_file():
        base = load(TEACHER)
        bc = base.model.config
        cfg = LlamaConfig(vocab_size=bc.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                          tie_word_embeddings=True, bos_token_id=bc.bos_token_id, eos_token_id=bc.eos_token_id)
        torch.manual_seed(layers)
        model = LlamaForCausalLM(cfg).eval()
        ckpt = Checkpoint(model, base.tokenizer, {"format": 1, "source": f"depth-probe-{layers}", "stages": []},
                          gguf_vocab=base.gguf_vocab)
        export_gguf(ckpt, out, "Q8_0", validate=False)
    return out


def artifacts(stand_in: bool) -> tuple[dict[str, Path], dict[str, str], dict]:
    from export.gguf.writer import export_gguf

    pruned, how = pruned_student(stand_in)
    plan = [(TEACHER, TEACHER, t, "calibration") for t in TYPES]
    plan += [("pruned-student", pruned, t, "scored") for t in TYPES]
    plan += [("gemma3-270m", "gemma3-270m", t, "scored") for t in GEMMA_TYPES]
    paths, split = {}, {}
    for name, source, etype, role in plan:
        path = WORK / f"{name}.{etype}.gguf"
        if not path.is_file():
            print(f"exporting {path.name}", flush=True)
            export_gguf(source, path, etype, validate=False)
        paths[path.name], split[path.name] = path, role
    for layers in PROBE_LAYERS:
        path = depth_probe(layers)
        paths[path.name], split[path.name] = path, "probe"
    return paths, split, how


def run_all(paths: dict[str, Path], rounds: int, repetitions: int, backend: str, threads: int) -> list[dict]:
    runs = []
    order = list(paths)
    rng = random.Random(0)
    for rnd in range(rounds):
        rng.shuffle(order)
        for name in order:
            rec = measure(paths[name], LocalTransport(), "llama.cpp", threads=threads, repetitions=repetitions,
                          backend=backend, env=RUNNER_ENV)
            rec["round"] = rnd
            s = rec["summary"]
            print(f"round {rnd} {name:32s} tg128 {s['decode_tps']:7.1f}  pp512 {s['prefill_tps_512']:7.1f}  "
                  f"load {rec['loadavg_before'][0]:.2f}", flush=True)
            runs.append(rec)
    return runs


def medians(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per artifact: median tokens/s over every repetition of every round, per test."""
    out: dict[str, dict[str, list[float]]] = {}
    for rec in runs:
        d = out.setdefault(rec["artifact"], {})
        for t in rec["tests"]:
            d.setdefault(t["name"], []).extend(t["samples_ts"])
        d.setdefault("peak_rss", []).append(rec["peak_rss_bytes"])
    return {a: {"decode_tps": statistics.median(d["tg128"]), "prefill_tps_128": statistics.median(d["pp128"]),
                "prefill_tps_512": statistics.median(d["pp512"]), "peak_rss_bytes": max(d["peak_rss"]),
                "ctx": P.N_GEN + max(P.PROMPT_LENGTHS), "samples": len(d["tg128"])} for a, d in out.items()}


def round_spread(runs: list[dict], test: str) -> float:
    """Noise floor: median over artifacts and rounds of |round median / median of all rounds - 1|."""
    by_art: dict[str, list[list[float]]] = {}
    for rec in runs:
        by_art.setdefault(rec["artifact"], []).append(next(t["samples_ts"] for t in rec["tests"] if t["name"] == test))
    devs = []
    for rounds in by_art.values():
        pooled = statistics.median([x for r in rounds for x in r])
        devs += [abs(statistics.median(r) / pooled - 1) for r in rounds]
    return round(statistics.median(devs), 4)


def score(raw: dict) -> dict:
    paths = {k: Path(v) for k, v in raw["paths"].items()}
    split, host = raw["split"], raw["host"]
    spec = DeviceSpec(**host)  # the host as probed during the measured run
    meds = medians(raw["runs"])
    infos = {name: describe(p) for name, p in paths.items()}
    cal_set = sorted(n for n in paths if split[n] == "calibration")
    probes = sorted(n for n in paths if split[n] == "probe")
    points = [(infos[n], meds[n]) for n in cal_set]
    points += [(infos[n], {"decode_tps": meds[n]["decode_tps"], "prefill_tps_512": None}) for n in probes]
    threads = raw.get("threads", THREADS)
    cal = P.Calibration.fit(points, spec, threads=threads,
                            source=f"llama.cpp ({raw['backend']}) on {spec.cpu_name}, {threads} threads, "
                                   f"{TEACHER} F16/Q8_0/Q4_0/Q4_K_M + depth probes {list(PROBE_LAYERS)} layers, "
                                   f"scripts/bench_devices.py {P.stamp()}")
    cal.save(P.DEFAULT_CALIBRATION)

    def row(name: str) -> dict:
        p = P.predict(infos[name], spec, ctx=P.N_GEN // 2, cal=cal)  # tg128 from an empty cache: mean ctx 64
        return {"artifact": name, "measured_decode_tps": round(meds[name]["decode_tps"], 3),
                "predicted_decode_tps": round(p["decode_tps"], 3),
                "measured_prefill_tps": round(meds[name]["prefill_tps_512"], 3),
                "predicted_prefill_tps": round(p["prefill_tps"]["512"], 3)}

    def rel(rows: list[dict], kind: str) -> float:
        errors = [abs(r[f"predicted_{kind}_tps"] / r[f"measured_{kind}_tps"] - 1) for r in rows]
        return round(statistics.median(errors), 4)

    rows = [row(n) for n in sorted(paths) if split[n] == "scored"]
    cal_rows = [row(n) for n in cal_set]
    student_q4 = describe(paths["pruned-student.Q4_0.gguf"])
    predictions = {}
    for name in profile_names():
        dev = spec if name == "local" else load_profile(name)
        p = P.predict(student_q4, dev, ctx=512, cal=cal)
        predictions[name] = {"decode_tps": round(p["decode_tps"], 2),
                             "prefill_tps_512": round(p["prefill_tps"]["512"], 1),
                             "ttft_ms": round(p["ttft_ms"], 1), "fits": p["memory"]["fits"],
                             "memory_mb": round(p["memory"]["total_bytes"] / 1e6, 1), "threads": p["threads"],
                             "note": p["note"]}
    loads = [r["loadavg_before"][0] for r in raw["runs"]] + [r["loadavg_after"][0] for r in raw["runs"]]
    return {
        "rows": rows, "median_abs_error_decode": rel(rows, "decode"), "median_abs_error_prefill": rel(rows, "prefill"),
        "predictions": predictions,
        "split": {"calibration": cal_set + probes, "scored": [r["artifact"] for r in rows],
                  "rule": f"calibrated on {TEACHER} (4 types) and depth probes (decode only); scored on the "
                          "pruned student and gemma3-270m"},
        "calibration_rows": cal_rows,
        "calibration": {"decode_eff": cal.decode_eff, "seconds_per_layer": cal.seconds_per_layer,
                        "decode_fit": cal.decode_fit, "prefill_eff": cal.prefill_eff, "source": cal.source,
                        "probe_decode_tps": {n: round(meds[n]["decode_tps"], 2) for n in probes}},
        "pruned_student": raw["pruned"], "host": {k: spec.to_dict()[k] for k in ("cpu_name", "cores", "bandwidth_gbs",
                                                                              "compute", "usable_gb")},
        "threads": threads, "runner_env": RUNNER_ENV, "rounds": raw["rounds"], "repetitions": raw["repetitions"],
        "backend": raw["backend"],
        "samples_per_artifact": {a: m["samples"] for a, m in meds.items()},
        "measurement_round_spread": {"decode": round_spread(raw["runs"], "tg128"),
                                     "prefill": round_spread(raw["runs"], "pp512"),
                                     "meaning": "median |one round's median / all rounds' median - 1| per artifact: "
                                                "the noise of the measurements the errors are scored against"},
        "loadavg_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "other_tests_median_tps": {a: {"pp128": round(m["prefill_tps_128"], 2)} for a, m in meds.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=THREADS, help="llama.cpp threads (default 2)")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--backend", default="auto", choices=["auto", "python", "llama-bench"])
    ap.add_argument("--stand-in", action="store_true", help="depth-pruned stand-in when `slimkit prune` is missing")
    ap.add_argument("--rescore", action="store_true", help="recompute the result from build/bench_devices/runs.json")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    raw_path = WORK / "runs.json"
    if a.rescore:
        raw = json.loads(raw_path.read_text())
    else:
        paths, split, how = artifacts(a.stand_in)
        host = load_profile("local", threads=a.threads)
        runs = run_all(paths, a.rounds, a.repetitions, a.backend, a.threads)
        raw = {"paths": {k: str(v) for k, v in paths.items()}, "split": split, "pruned": how, "runs": runs,
               "host": host.to_dict(), "threads": a.threads, "rounds": a.rounds, "repetitions": a.repetitions,
               "backend": sorted({r["backend"] for r in runs})[0]}
        tmp = raw_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw))
        os.replace(tmp, raw_path)
    metrics = score(raw)
    path = write_result("devices", metrics)
    print(json.dumps({k: metrics[k] for k in ("median_abs_error_decode", "median_abs_error_prefill")}), "->", path)


if __name__ == "__main__":
    main()
