"""Latency and memory prediction for a device that is not attached, calibrated on measured runs.

Decode is memory-bound: every generated token reads the weights (less the token-embedding table, of which
one row is read) and the KV cache up to the current position, so
    seconds/token = sum over tensor-type groups g of bytes_g / (bandwidth * decode_efficiency[g])
                    + layers * seconds_per_layer
with the F16 KV cache (and F32 norms) in the F16 group. Groups rather than whole files because a file's
types are mixed: a Q4_0 gemma3 is three quarters Q8_0 (its 262k-row embedding / output table). The
per-layer term is the fixed cost of each layer's ~20 small kernels and thread barriers, which for a
100M-parameter model is a large part of a token's time; it is calibrated with depth probes (tiny random
models of different depth whose bytes are negligible).
Prefill is compute-bound: n prompt tokens cost 2 FLOPs per matrix parameter per token, the attention
scores and weighted sums (2 * 2 * layers * heads * head_dim per token pair, causal), and the LM head once
(llama.cpp computes logits for the last prompt token only), so
    seconds = FLOPs(n) / (peak_compute * prefill_efficiency[file_type]).
Efficiencies are what a real runtime attains of the device's peak; they are calibrated from measurements
(`Calibration.fit`): decode per tensor-type group and the per-layer time by least squares over the measured
artifacts (fewer unknowns when that system is under-determined or gives a non-physical value); prefill per
GGUF file type (the blocks' matrices, where prefill FLOPs go, have the file's type) and prompt length
(GEMM efficiency grows with the batch, attention overheads with the length). A prediction
for another device transfers the calibration device's efficiencies to that device's peaks, and says so.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devices.artifact import ArtifactInfo
from devices.errors import DeviceError
from devices.specs import DeviceSpec

PROMPT_LENGTHS = (128, 512)
N_GEN = 128
DEFAULT_CALIBRATION = Path(__file__).parent / "calibration" / "llama.cpp.json"
# Without any measurement: round numbers, named as such in every prediction that uses them.
PRIOR_DECODE_EFF, PRIOR_PREFILL_EFF, PRIOR_OVERHEAD = 0.5, 0.3, 256 * 2**20


def prefill_flops(a: ArtifactInfo, n: int) -> float:
    attention = 2 * a.n_layers * a.n_head * a.head_dim * n * (n + 1)  # QK^T and AV over the causal triangle
    return 2.0 * n * a.matmul_params + attention + 2.0 * a.output_params


def decode_bytes(a: ArtifactInfo, ctx: int) -> float:
    return float(a.decode_bytes + a.kv_bytes(ctx))


def type_group(tensor_type: str) -> str:
    """Tensor types that cost alike per byte in decode: float, Q8_0, Q4_0, Q4_1, and the rest (K-quants, Q5_x)."""
    if tensor_type in ("F32", "F16", "BF16"):
        return "F16"
    return tensor_type if tensor_type in ("Q8_0", "Q4_0", "Q4_1") else "other-quants"


def decode_features(a: ArtifactInfo, ctx: int) -> dict[str, float]:
    """Bytes read per decoded token, by tensor-type group (the KV cache is F16)."""
    out: dict[str, float] = {"F16": float(a.kv_bytes(ctx))}
    for ttype, nbytes in a.decode_bytes_by_type.items():
        g = type_group(ttype)
        out[g] = out.get(g, 0.0) + nbytes
    return out


def _fit_decode(arts: list[ArtifactInfo], tps: list[float], bw: float) -> tuple[dict[str, float], float, str]:
    """(efficiency per group, seconds per layer, how) from seconds/token = sum_g bytes_g c_g + layers t_layer.

    Least squares; when the system is under-determined or a coefficient comes out <= 0 (noise), the
    groups share one efficiency, and then the per-layer term is dropped."""
    import numpy as np

    feats = [decode_features(a, N_GEN // 2) for a in arts]
    groups = sorted({g for f in feats for g, b in f.items() if b > 0})
    y = 1.0 / np.array(tps)
    layers = np.array([[a.n_layers] for a in arts], dtype=float)
    per_group = np.array([[f.get(g, 0.0) for g in groups] for f in feats])
    shared = per_group.sum(axis=1, keepdims=True)
    for x, names, how in ((np.hstack([per_group, layers]), groups, "per tensor-type group + per-layer time"),
                          (np.hstack([shared, layers]), ["*"], "one shared efficiency + per-layer time"),
                          (shared, ["*"], "one shared efficiency, no per-layer time")):
        if np.linalg.matrix_rank(x) < x.shape[1]:  # e.g. every artifact has the same depth
            continue
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        if (coef > 0).all():
            c = coef[:len(names)]
            eff = {g: float(1.0 / (c[0 if names == ["*"] else i] * bw)) for i, g in enumerate(groups)}
            return eff, float(coef[len(names)]) if x.shape[1] > len(names) else 0.0, f"{how}, least squares"
    raise DeviceError("decode calibration failed: measured speeds do not grow with fewer bytes; measure again")


@dataclass
class Calibration:
    """Efficiencies measured with one runtime on one device; `source` says where they come from."""

    source: str
    runtime: str = "llama.cpp"
    device: str = "local"
    threads: int | None = None
    bandwidth_gbs: float = 0.0       # the device's reference bandwidth the efficiencies are relative to
    compute_gflops: float = 0.0      # the device's reference compute
    decode_eff: dict[str, float] = field(default_factory=dict)   # per tensor-type group (type_group)
    seconds_per_layer: float = 0.0                               # fixed decode cost per layer and token
    prefill_eff: dict[str, dict[str, float]] = field(default_factory=dict)  # file type -> prompt length -> eff
    decode_fit: str = ""
    runtime_overhead_bytes: int = PRIOR_OVERHEAD
    points: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def fit(cls, measurements: list[tuple[ArtifactInfo, dict[str, float]]], device: DeviceSpec, *, source: str,
            runtime: str = "llama.cpp", threads: int | None = None) -> Calibration:
        """measurements: (artifact, {"decode_tps", "prefill_tps_128", "prefill_tps_512", "peak_rss_bytes"?})."""
        if not measurements:
            raise DeviceError("calibration needs at least one measured artifact")
        bw, comp = device.bandwidth_gbs * 1e9, device.cpu_fp32_gflops * 1e9
        pre: dict[str, dict[str, list[float]]] = {}
        overheads, points = [], []
        decode_eff, per_layer, decode_fit = _fit_decode([a for a, _ in measurements],
                                                        [m["decode_tps"] for _, m in measurements], bw)
        for art, m in measurements:
            if m.get("prefill_tps_512") is None:  # a depth probe: decode only
                continue
            for n in PROMPT_LENGTHS:
                e = prefill_flops(art, n) * m[f"prefill_tps_{n}"] / n / comp
                pre.setdefault(art.file_type, {}).setdefault(str(n), []).append(e)
            if m.get("peak_rss_bytes"):
                overheads.append(m["peak_rss_bytes"] - art.file_bytes - art.kv_bytes(m.get("ctx", 512)))
            points.append({"artifact": Path(art.path).name, "file_type": art.file_type, **m})
        return cls(source=source, runtime=runtime, device=device.name, threads=threads,
                   bandwidth_gbs=device.bandwidth_gbs, compute_gflops=device.cpu_fp32_gflops,
                   decode_eff=decode_eff, seconds_per_layer=per_layer, decode_fit=decode_fit,
                   prefill_eff={ft: {n: statistics.median(v) for n, v in by_n.items()} for ft, by_n in pre.items()},
                   runtime_overhead_bytes=int(max(overheads)) if overheads else PRIOR_OVERHEAD, points=points)

    def efficiency(self, kind: str, key: str, n: int = 512) -> tuple[float, str]:
        """(efficiency, how it was chosen) for a decode group / prefill file type at prompt length n;
        what was not calibrated takes the median of what was (prefill: the nearest calibrated length)."""
        if kind == "decode":
            table = self.decode_eff
        else:
            table = {}
            for ft, by_n in self.prefill_eff.items():
                nearest = min(by_n, key=lambda k: abs(int(k) - n))
                table[ft] = by_n[nearest]
        if key in table:
            return table[key], f"calibrated for {key}"
        if table:
            return statistics.median(table.values()), f"{key} not calibrated: median of {sorted(table)}"
        return (PRIOR_DECODE_EFF if kind == "decode" else PRIOR_PREFILL_EFF), "uncalibrated prior"

    def decode_seconds(self, a: ArtifactInfo, ctx: int, device: DeviceSpec) -> tuple[float, list[str]]:
        """Seconds per decoded token at ctx on device, and how each group's efficiency was chosen.

        The per-layer time was measured on the calibration device; elsewhere it is scaled by the ratio of
        CPU compute (it is kernel-launch and barrier work)."""
        seconds, hows = 0.0, []
        for g, nbytes in sorted(decode_features(a, ctx).items()):
            if nbytes > 0:
                e, how = self.efficiency("decode", g)
                seconds += nbytes / (device.bandwidth_gbs * 1e9 * e)
                hows.append(how)
        scale = self.compute_gflops / device.cpu_fp32_gflops if self.compute_gflops else 1.0
        return seconds + a.n_layers * self.seconds_per_layer * scale, hows

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path | None = None) -> Calibration:
        path = Path(path) if path else DEFAULT_CALIBRATION
        if not path.is_file():
            if path == DEFAULT_CALIBRATION:
                return cls(source="uncalibrated prior: no measurements (run scripts/bench_devices.py)")
            raise DeviceError(f"calibration file {path} not found; write one with scripts/bench_devices.py")
        try:
            cal = cls(**json.loads(path.read_text()))
            if any(not isinstance(v, dict) for v in cal.prefill_eff.values()):
                raise ValueError("prefill_eff is not per prompt length (an older format)")
            return cal
        except (ValueError, TypeError) as exc:
            raise DeviceError(f"{path}: not a calibration file ({exc}); regenerate it") from None


def memory_fit(a: ArtifactInfo, device: DeviceSpec, ctx: int, cal: Calibration) -> dict[str, Any]:
    """Weights + KV cache at ctx + runtime overhead against the device's usable memory."""
    need = a.file_bytes + a.kv_bytes(ctx) + cal.runtime_overhead_bytes
    usable = device.usable_gb * 1e9
    return {"weights_bytes": a.file_bytes, "kv_cache_bytes": a.kv_bytes(ctx),
            "runtime_overhead_bytes": cal.runtime_overhead_bytes, "total_bytes": need,
            "usable_bytes": int(usable), "fits": need <= usable}


def check_fits(a: ArtifactInfo, device: DeviceSpec, ctx: int, cal: Calibration) -> dict[str, Any]:
    fit = memory_fit(a, device, ctx, cal)
    if not fit["fits"]:
        raise DeviceError(
            f"{Path(a.path).name} needs about {fit['total_bytes'] / 1e6:.0f} MB at --ctx {ctx} (weights "
            f"{a.file_bytes / 1e6:.0f} MB + KV cache {fit['kv_cache_bytes'] / 1e6:.0f} MB + runtime "
            f"{cal.runtime_overhead_bytes / 1e6:.0f} MB) but {device.name} has {fit['usable_bytes'] / 1e6:.0f} MB "
            "usable; choose a smaller quantization or a shorter --ctx")
    return fit


def predict(a: ArtifactInfo, device: DeviceSpec, ctx: int = 512, cal: Calibration | None = None) -> dict[str, Any]:
    """Predicted decode / prefill tokens/s, time to first token and memory fit of `a` on `device`."""
    cal = cal or Calibration.load()
    e_pre = {n: cal.efficiency("prefill", a.file_type, n) for n in PROMPT_LENGTHS}
    how_pre = e_pre[PROMPT_LENGTHS[-1]][1]
    bw, comp = device.bandwidth_gbs * 1e9, device.cpu_fp32_gflops * 1e9
    seconds, hows = cal.decode_seconds(a, ctx, device)
    decode_tps = 1.0 / seconds
    bench_decode_tps = 1.0 / cal.decode_seconds(a, N_GEN // 2, device)[0]  # tg128 from an empty cache
    e_dec = decode_bytes(a, ctx) * decode_tps / bw  # the effective (byte-weighted) decode efficiency
    how_dec = "; ".join(dict.fromkeys(hows))
    prefill = {n: n * comp * e_pre[n][0] / prefill_flops(a, n) for n in PROMPT_LENGTHS}
    caveats = []
    if not cal.points:
        caveats.append("no calibration measurements: round prior efficiencies, expect large errors")
    elif cal.device != device.name:
        caveats.append(f"efficiencies measured on '{cal.device}' and applied to {device.name}'s peak figures")
    if device.llama_cpp_backend != "cpu":
        caveats.append(f"llama.cpp runs on the {device.llama_cpp_backend} GPU backend there; the calibration is "
                       "from CPU runs and the CPU peak is used: low confidence")
    return {
        "kind": "prediction", "device": device.name, "artifact": Path(a.path).name, "file_type": a.file_type,
        "runtime": cal.runtime, "ctx": ctx, "threads": device.big_cores,
        "decode_tps": decode_tps, "decode_tps_tg128": bench_decode_tps,
        "prefill_tps": {str(n): v for n, v in prefill.items()},
        "ttft_ms": 1e3 * (PROMPT_LENGTHS[0] / prefill[PROMPT_LENGTHS[0]] + 1 / bench_decode_tps),
        "memory": memory_fit(a, device, ctx, cal),
        "inputs": {"bandwidth_gbs": device.bandwidth_gbs, "compute_gflops": device.cpu_fp32_gflops,
                   "decode_bytes_per_token": decode_bytes(a, ctx), "decode_efficiency": e_dec,
                   "seconds_per_layer": cal.seconds_per_layer,
                   "prefill_efficiency": {str(n): e for n, (e, _) in e_pre.items()}},
        "calibration": {"source": cal.source, "device": cal.device, "decode": how_dec, "prefill": how_pre},
        "caveats": caveats,
        "note": "PREDICTION, not a measurement: " + ("; ".join(caveats) if caveats else "calibrated on this device"),
    }


def stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
