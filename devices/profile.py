"""Profile an artifact on a target: check it fits, push runner + artifact, run, parse, summarize.

`profile()` is the verb behind `slimkit profile`: a transport URL (local, ssh://, adb://) measures; a
profile name predicts (or measures when the profile names an `address` that answers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from devices import predict as P
from devices.artifact import ArtifactInfo, describe
from devices.errors import DeviceError
from devices.runners import EXIT_MISSING_RUNTIME, RUNNER_FILES, RUNNERS_DIR
from devices.specs import DeviceSpec, load_profile
from devices.transports import RUN_TIMEOUT, LocalTransport, Transport, parse_device

RUNTIMES = tuple(RUNNER_FILES)


def default_runtime(a: ArtifactInfo) -> str:
    return "onnxruntime" if a.format == "onnx" else "llama.cpp"


def _artifact_files(a: ArtifactInfo) -> tuple[list[Path], str]:
    """(files to push, name of the model argument inside the pushed directory)."""
    path = Path(a.path)
    if a.format == "onnx":
        return sorted(p for p in path.iterdir() if p.is_file()), "."
    return [path], path.name


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of a runner record: mean tokens/s per test (llama-bench's avg_ts)."""
    out: dict[str, Any] = {}
    for t in record.get("tests", []):
        if t["n_gen"]:
            out["decode_tps"] = t["avg_ts"]
        else:
            out[f"prefill_tps_{t['n_prompt']}"] = t["avg_ts"]
    out["ttft_ms"] = (record.get("ttft_ms") or {}).get("avg")
    out["load_s"] = (record.get("load_s") or {}).get("avg")
    out["peak_rss_bytes"] = record.get("peak_rss_bytes")
    return out


def _remote_spec(transport: Transport, available: float) -> DeviceSpec:
    return DeviceSpec(name=transport.describe(), description="", os="", transport=transport.name,
                      total_gb=available / 1e9, usable_gb=available / 1e9, bandwidth_gbs=0.0, cores=0, big_cores=0)


def measure(artifact: str | Path, transport: Transport, runtime: str | None = None, *, threads: int = 2,
            repetitions: int = 5, prompts: tuple[int, ...] = P.PROMPT_LENGTHS, gen: int = P.N_GEN,
            ctx: int | None = None, timeout: float = RUN_TIMEOUT, backend: str = "auto",
            calibration: P.Calibration | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the runner for `runtime` on the target through `transport`; the parsed record + summary.

    env: variables for the runner on the target (e.g. OMP_WAIT_POLICY=PASSIVE: llama.cpp's OpenMP threads
    otherwise spin at every barrier, which on a CPU shared with other jobs costs up to 10x)."""
    a = describe(artifact)
    runtime = runtime or default_runtime(a)
    if runtime not in RUNNER_FILES:
        raise DeviceError(f"unknown runtime {runtime}; use one of {', '.join(RUNTIMES)}")
    if (runtime == "onnxruntime") != (a.format == "onnx"):
        raise DeviceError(f"{Path(a.path).name} is {a.format}; --runtime {runtime} cannot run it "
                          f"(use --runtime {default_runtime(a)})")
    ctx = ctx or max(prompts) + gen
    transport.check()
    available = transport.meminfo_available()
    if available:
        P.check_fits(a, _remote_spec(transport, available), ctx, calibration or P.Calibration.load())
    runner_dir = transport.push([RUNNER_FILES[runtime], RUNNERS_DIR / "common.py"])
    files, model_name = _artifact_files(a)
    model_dir = transport.push(files)
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    argv = prefix + [transport.python, f"{runner_dir}/{RUNNER_FILES[runtime].name}", "--model",
            model_dir if model_name == "." else f"{model_dir}/{model_name}", "--threads", str(threads),
            "--repetitions", str(repetitions), "--prompt", ",".join(map(str, prompts)), "--gen", str(gen)]
    if runtime == "llama.cpp":
        argv += ["--ctx", str(ctx), "--backend", backend]
    load_before = os.getloadavg() if isinstance(transport, LocalTransport) else None
    r = transport.run(argv, timeout=timeout)
    record = _parse(r.stdout, r.stderr, r.returncode, transport, runtime)
    record.update({"kind": "measurement", "device": transport.describe(), "runtime": runtime,
                   "artifact": Path(a.path).name, "file_type": a.file_type, "env": env or {}})
    if load_before is not None:
        record["loadavg_before"], record["loadavg_after"] = list(load_before), list(os.getloadavg())
    record["summary"] = summarize(record)
    return record


def _parse(stdout: str, stderr: str, code: int, transport: Transport, runtime: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    try:
        record = json.loads(lines[-1]) if lines else None
    except ValueError:
        record = None
    if record and "error" in record:
        if code == EXIT_MISSING_RUNTIME:
            raise DeviceError(f"{transport.describe()} lacks the {runtime} runtime: {record['error']}")
        raise DeviceError(f"{runtime} failed on {transport.describe()}: {record['error']}")
    if code == 127 or (code != 0 and "not found" in stderr and transport.python in stderr):
        raise DeviceError(f"{transport.describe()} has no {transport.python}; install Python 3 there "
                          "(Android: Termux) or pass --python PATH")
    if code != 0 or record is None:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"the {runtime} runner failed on {transport.describe()} (exit {code}): {last[:300]}")
    return record


def profile(artifact: str | Path, device: str, runtime: str | None = None, *, ctx: int = 512, threads: int = 2,
            repetitions: int = 5, identity: str | None = None, python: str | None = None,
            calibration: str | Path | None = None, timeout: float = RUN_TIMEOUT,
            env: dict[str, str] | list[str] | None = None) -> dict[str, Any]:
    """Measure on a reachable device, predict for a profile name (see module doc). env: dict or KEY=VALUE list."""
    if isinstance(env, list):
        bad = [kv for kv in env if "=" not in kv or kv.startswith("=")]
        if bad:
            raise DeviceError(f"--env {bad[0]}: expected KEY=VALUE, e.g. OMP_WAIT_POLICY=PASSIVE")
        env = dict(kv.split("=", 1) for kv in env)
    a = describe(artifact)
    if runtime and runtime not in RUNNER_FILES:
        raise DeviceError(f"unknown runtime {runtime}; use one of {', '.join(RUNTIMES)}")
    cal = P.Calibration.load(Path(calibration) if calibration else None)
    transport = parse_device(device, identity=identity, python=python)
    note = None
    if transport is None:
        spec = load_profile(device)
        if spec.address:
            transport = parse_device(spec.address, identity=identity, python=python)
            try:
                transport.check()
            except DeviceError as exc:
                transport, note = None, f"{spec.address} unreachable ({exc}); predicted instead"
        if transport is None:
            if (runtime or default_runtime(a)) != "llama.cpp":
                raise DeviceError("predictions are calibrated for llama.cpp only; measure ONNX Runtime on a device")
            result = P.predict(a, spec, ctx=ctx, cal=cal)
            if note:
                result["note"] += f"; {note}"
            return result
    record = measure(artifact, transport, runtime, threads=threads, repetitions=repetitions, ctx=ctx,
                     timeout=timeout, calibration=cal, env=env)
    if device == "local" and record["runtime"] == "llama.cpp":  # measured and predicted side by side
        record["prediction"] = P.predict(a, load_profile("local", threads=threads), ctx=ctx, cal=cal)
    return record


def render(result: dict[str, Any]) -> str:
    """Human-readable lines for a measurement or a prediction."""
    if result["kind"] == "prediction":
        m = result["memory"]
        lines = [f"PREDICTION for {result['device']} ({result['runtime']}, {result['threads']} threads, "
                 f"ctx {result['ctx']}) of {result['artifact']} [{result['file_type']}]",
                 f"  decode   {result['decode_tps']:.1f} tokens/s at ctx {result['ctx']} "
                 f"({result['decode_tps_tg128']:.1f} tokens/s over the first {P.N_GEN})",
                 "  prefill  " + ", ".join(f"{v:.0f} tokens/s at {n}" for n, v in result["prefill_tps"].items()),
                 f"  TTFT     {result['ttft_ms']:.0f} ms for a {P.PROMPT_LENGTHS[0]}-token prompt",
                 f"  memory   {m['total_bytes'] / 1e6:.0f} MB needed of {m['usable_bytes'] / 1e6:.0f} MB usable: "
                 + ("fits" if m["fits"] else "DOES NOT FIT"),
                 f"  calibration: {result['calibration']['source']} (decode: {result['calibration']['decode']}; "
                 f"prefill: {result['calibration']['prefill']})"]
        lines += [f"  caveat: {c}" for c in result["caveats"]]
        return "\n".join(lines)
    s = result["summary"]
    lines = [f"MEASURED on {result['device']} with {result['runtime']} ({result.get('backend')}, "
             f"{result.get('n_threads')} threads, {result['repetitions']} repetitions) : {result['artifact']}"]
    for t in result["tests"]:
        lines.append(f"  {t['name']:<7} {t['avg_ts']:.1f} ± {t['stddev_ts']:.1f} tokens/s")
    lines.append(f"  load {s['load_s']:.2f} s, TTFT {s['ttft_ms'] or float('nan'):.0f} ms, peak RSS "
                 f"{(s['peak_rss_bytes'] or 0) / 1e6:.0f} MB, artifact {result['artifact_bytes'] / 1e6:.0f} MB")
    if "loadavg_before" in result:
        lines.append(f"  host load average before/after: {result['loadavg_before'][0]:.2f} / "
                     f"{result['loadavg_after'][0]:.2f}")
    if "prediction" in result:
        p = result["prediction"]
        lines.append(f"  predicted here: decode {p['decode_tps_tg128']:.1f}, prefill "
                     + ", ".join(f"{v:.0f} at {n}" for n, v in p["prefill_tps"].items())
                     + f" tokens/s ({p['calibration']['source']})")
    return "\n".join(lines)


def device_rows() -> list[tuple]:
    """Rows for `slimkit devices` (the `local` profile is shown unprobed)."""
    import yaml

    from devices.specs import _profile_files

    rows = [("name", "RAM GB (usable)", "bandwidth GB/s", "cores (big)", "CPU fp32 GFLOPS", "transport", "description")]
    for name, path in sorted(_profile_files().items()):
        d = yaml.safe_load(path.read_text())
        mem, cpu = d.get("memory", {}), d.get("cpu", {})
        rows.append((name, f"{mem.get('total_gb')} ({mem.get('usable_gb')})", d.get("bandwidth_gbs"),
                     f"{cpu.get('cores')} ({cpu.get('big_cores')})", (d.get("compute") or {}).get("cpu_fp32_gflops"),
                     d.get("transport"), d.get("description", "")))
    return rows
