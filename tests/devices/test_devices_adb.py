"""The adb transport with the real adb binary and no device attached: clear one-line errors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from devices.errors import DeviceError
from devices.profile import profile
from devices.transports import AdbTransport, parse_device
from devices_fixtures import adb_env, tiny_gguf  # noqa: F401  (pytest fixtures)


def test_no_device_attached(adb_env, tiny_gguf):
    t = AdbTransport("SLIMKIT0TEST", env=adb_env)
    with pytest.raises(DeviceError, match=r"adb device SLIMKIT0TEST is not available \(.*not found.*\); connect it"):
        t.check()
    with pytest.raises(DeviceError, match="SLIMKIT0TEST"):
        t.push([tiny_gguf])


def test_cli_adb_without_device_exits_2(adb_env, tiny_gguf):
    argv = [sys.executable, "-m", "slimkit.cli", "profile", str(tiny_gguf), "--device", "adb://SLIMKIT0TEST"]
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **adb_env}, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "adb device SLIMKIT0TEST is not available" in lines[0]


def test_parse_device_urls():
    assert parse_device("adb://emulator-5554").serial == "emulator-5554"
    ssh = parse_device("ssh://pi@raspberrypi.local:2222")
    assert (ssh.user, ssh.host, ssh.port) == ("pi", "raspberrypi.local", 2222)
    assert parse_device("ssh://host").port == 22 and parse_device("raspberry-pi-5") is None
    with pytest.raises(DeviceError, match="no serial"):
        parse_device("adb://")
    with pytest.raises(DeviceError, match="bad port"):
        parse_device("ssh://h:notaport")


def test_profile_name_without_reachable_address_predicts(tiny_gguf, tmp_path, monkeypatch, closed_port):
    """A user profile with an address that does not answer falls back to a prediction and says why."""
    from devices.specs import PROFILES_DIR

    text = (PROFILES_DIR / "raspberry-pi-5.yaml").read_text().replace("name: raspberry-pi-5", "name: my-pi")
    (tmp_path / "my-pi.yaml").write_text(text + "address: adb://SLIMKIT0TEST\n")
    monkeypatch.setenv("SLIMKIT_DEVICE_PROFILES", str(tmp_path))
    if not shutil.which("adb"):
        pytest.skip("adb not installed")
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(closed_port))
    try:
        r = profile(tiny_gguf, "my-pi")
    finally:
        subprocess.run(["adb", "kill-server"], capture_output=True, timeout=30)
    assert r["kind"] == "prediction" and "adb://SLIMKIT0TEST unreachable" in r["note"]
