"""Predictor: the byte / FLOP model, calibration recovers known efficiencies, memory fit, profiles load."""
from __future__ import annotations

import dataclasses
import math

import pytest

from devices import predict as P
from devices.artifact import describe
from devices.errors import DeviceError
from devices.specs import load_profile, profile_names
from devices_fixtures import tiny_gguf, tiny_gguf_gemma, tiny_gguf_tied  # noqa: F401  (pytest fixtures)

PHONES_AND_BOARDS = ["raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "pixel-8", "galaxy-s24", "iphone-15-pro"]


def test_every_required_profile_loads_with_sourced_numbers():
    from devices.specs import PROFILES_DIR

    assert set(PHONES_AND_BOARDS + ["local"]) <= set(profile_names())
    for name in PHONES_AND_BOARDS:
        spec = load_profile(name)
        assert 0 < spec.usable_gb <= spec.total_gb
        assert spec.bandwidth_gbs > 0 and spec.cpu_fp32_gflops > 0 and spec.big_cores <= spec.cores
        text = (PROFILES_DIR / f"{name}.yaml").read_text()
        for key in ("total_gb", "usable_gb", "bandwidth_gbs", "cores", "cpu_fp32_gflops"):
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(key + ":"))
            assert "#" in line, f"{name}: {key} has no source comment"


def test_local_profile_is_probed(monkeypatch):
    import devices.specs as S

    monkeypatch.setattr(S, "measure_bandwidth_gbs", lambda: 12.5)
    monkeypatch.setattr(S, "measure_gemm_gflops", lambda threads: 40.0 * threads)
    spec = load_profile("local", threads=2)
    assert spec.bandwidth_gbs == 12.5 and spec.cpu_fp32_gflops == 80.0 and spec.big_cores == 2
    assert spec.total_gb > 0 and spec.measured["threads"] == 2


def test_decode_bytes_exclude_untied_embedding_table(tiny_gguf, tiny_gguf_tied):
    untied, tied = describe(tiny_gguf), describe(tiny_gguf_tied)
    embd = untied.n_vocab * untied.n_embd * 34 // 32  # Q8_0: 34 bytes per 32 weights
    assert untied.decode_bytes == untied.weight_bytes - embd
    assert tied.decode_bytes == tied.weight_bytes
    assert untied.kv_bytes(100) == 2 * untied.n_layers * 100 * untied.n_head_kv * untied.head_dim * 2


def test_calibration_recovers_known_efficiencies(tiny_gguf, tiny_gguf_tied, tiny_gguf_gemma):
    """Synthetic measurements made from known efficiencies and per-layer time: the fit gives them back."""
    dev = dataclasses.replace(load_profile("raspberry-pi-5"), name="bench-host")
    arts = [describe(p) for p in (tiny_gguf, tiny_gguf_tied, tiny_gguf_gemma)]  # Q8_0 2 layers, F16 2 and 3 layers
    bw, comp, per_layer = dev.bandwidth_gbs * 1e9, dev.cpu_fp32_gflops * 1e9, 2e-4
    decode_truth, prefill_truth = {"Q8_0": 0.61, "F16": 0.44}, {"Q8_0": 0.23, "F16": 0.31}
    meas = []
    for a in arts:
        feats = P.decode_features(a, P.N_GEN // 2)
        m = {"decode_tps": 1 / (sum(b / (bw * decode_truth[g]) for g, b in feats.items()) + a.n_layers * per_layer)}
        for n in P.PROMPT_LENGTHS:
            m[f"prefill_tps_{n}"] = n * comp * prefill_truth[a.file_type] * (n / 512) / P.prefill_flops(a, n)
        meas.append((a, m))
    cal = P.Calibration.fit(meas, dev, source="synthetic")
    assert cal.decode_fit.startswith("per tensor-type group + per-layer time")
    assert cal.seconds_per_layer == pytest.approx(per_layer)
    for key in decode_truth:
        assert cal.decode_eff[key] == pytest.approx(decode_truth[key])
        for n in P.PROMPT_LENGTHS:  # prefill efficiency per prompt length
            assert cal.prefill_eff[key][str(n)] == pytest.approx(prefill_truth[key] * n / 512)
    for a, m in meas:
        pred = P.predict(a, dev, ctx=P.N_GEN // 2, cal=cal)
        assert pred["decode_tps"] == pytest.approx(m["decode_tps"])
        assert pred["prefill_tps"]["128"] == pytest.approx(m["prefill_tps_128"])
    # an uncalibrated file type falls back to the median of the calibrated ones, and says so
    e, how = cal.efficiency("prefill", "Q4_K_M", 512)
    assert e == pytest.approx((0.23 + 0.31) / 2) and "not calibrated" in how
    # two artifacts of one depth cannot separate groups and per-layer time: one shared efficiency, said so
    two = P.Calibration.fit(meas[:2], dev, source="synthetic")
    assert two.decode_fit.startswith("one shared efficiency") and len(set(two.decode_eff.values())) == 1


def test_prediction_says_it_is_one_and_names_calibration(tiny_gguf, tmp_path):
    cal = P.Calibration(source="measured on test-host", device="local", decode_eff={"Q8_0": 0.5, "F16": 0.4},
                        prefill_eff={"Q8_0": {"128": 0.3, "512": 0.2}}, seconds_per_layer=1e-4,
                        compute_gflops=50.0, points=[{"artifact": "x"}])
    for name in PHONES_AND_BOARDS:
        r = P.predict(describe(tiny_gguf), load_profile(name), ctx=256, cal=cal)
        assert r["kind"] == "prediction" and r["note"].startswith("PREDICTION")
        assert r["calibration"]["source"] == "measured on test-host"
        assert "applied to" in " ".join(r["caveats"])
        assert math.isfinite(r["decode_tps"]) and r["decode_tps"] > 0 and r["memory"]["fits"]
    # the calibration round-trips through its JSON file
    path = cal.save(tmp_path / "cal.json")
    assert P.Calibration.load(path) == cal


def test_decode_slows_with_context(tiny_gguf):
    a, dev = describe(tiny_gguf), load_profile("pixel-8")
    cal = P.Calibration(source="t", decode_eff={"Q8_0": 0.5, "F16": 0.4})
    assert P.predict(a, dev, ctx=4096, cal=cal)["decode_tps"] < P.predict(a, dev, ctx=16, cal=cal)["decode_tps"]


def test_memory_fit_rejects_what_does_not_fit(tiny_gguf):
    a, dev = describe(tiny_gguf), load_profile("raspberry-pi-4")
    cal = P.Calibration(source="t", runtime_overhead_bytes=int(7.5e9))
    assert P.memory_fit(a, dev, 512, cal)["fits"] is False
    with pytest.raises(DeviceError, match="needs about .* MB .* usable; choose a smaller"):
        P.check_fits(a, dev, 512, cal)


def test_unknown_profile_and_missing_calibration(tmp_path):
    with pytest.raises(DeviceError, match="unknown device profile 'nokia-3310'"):
        load_profile("nokia-3310")
    with pytest.raises(DeviceError, match="calibration file .* not found"):
        P.Calibration.load(tmp_path / "none.json")


def test_bad_profile_file_is_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_text("name: broken\nmemory: {total_gb: lots}\ncpu: {}\n")
    monkeypatch.setenv("SLIMKIT_DEVICE_PROFILES", str(tmp_path))
    with pytest.raises(DeviceError, match="broken.yaml"):
        load_profile("broken")
