"""`slimkit devices` and `slimkit profile`: listing, prediction, local measurement, one-line errors."""
from __future__ import annotations

import json

from slimkit.cli import main
from devices_fixtures import tiny_gguf  # noqa: F401  (pytest fixtures)


def test_devices_lists_every_profile(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in ("raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "pixel-8", "galaxy-s24", "iphone-15-pro",
                 "local"):
        assert f"\n{name} " in out


def test_profile_name_predicts(tiny_gguf, capsys):
    assert main(["profile", str(tiny_gguf), "--device", "galaxy-s24", "--ctx", "1024", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["kind"] == "prediction" and r["device"] == "galaxy-s24" and r["ctx"] == 1024
    assert r["calibration"]["source"] and r["memory"]["fits"]
    assert main(["profile", str(tiny_gguf), "--device", "raspberry-pi-4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("PREDICTION for raspberry-pi-4") and "calibration:" in text


def test_profile_local_measures_and_predicts_beside(tiny_gguf, capsys):
    assert main(["profile", str(tiny_gguf), "--device", "local", "--threads", "1", "--repetitions", "2",
                 "--env", "OMP_WAIT_POLICY=PASSIVE", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["kind"] == "measurement" and r["device"] == "local" and r["env"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert {t["name"] for t in r["tests"]} == {"pp128", "pp512", "tg128"}
    assert r["prediction"]["kind"] == "prediction" and r["prediction"]["device"] == "local"


def test_profile_errors_are_one_line_exit_2(tiny_gguf, tmp_path, capsys, closed_port):
    cases = [
        ([str(tmp_path / "none.gguf"), "--device", "pixel-8"], "no such artifact"),
        ([str(tiny_gguf), "--device", "nokia-3310"], "unknown device profile"),
        ([str(tiny_gguf), "--device", f"ssh://nobody@127.0.0.1:{closed_port}"], "cannot reach ssh://"),
        ([str(tiny_gguf), "--device", "pixel-8", "--runtime", "onnxruntime"], "calibrated for llama.cpp only"),
        ([str(tiny_gguf), "--device", "local", "--env", "NOVALUE"], "expected KEY=VALUE"),
    ]
    for argv, message in cases:
        assert main(["profile", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
