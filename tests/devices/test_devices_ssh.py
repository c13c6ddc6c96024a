"""The ssh transport against a real OpenSSH server on 127.0.0.1 (started by the sshd fixture)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from devices.errors import DeviceError
from devices.predict import Calibration
from devices.profile import measure
from devices.transports import SshTransport, file_hash
from devices_fixtures import sshd, tiny_gguf  # noqa: F401  (pytest fixtures)


def test_run_push_cache_and_pull(sshd, tiny_gguf, tmp_path):
    t = SshTransport(**sshd)
    t.check()
    assert t.run(["echo", "hello world"]).stdout == "hello world\n"
    remote = t.push([tiny_gguf])
    assert remote.endswith(file_hash([tiny_gguf]))
    path = f"{remote}/{tiny_gguf.name}"
    mtime = t.run(["stat", "-c", "%Y.%s", path]).stdout
    assert mtime.split(".")[1].strip() == str(tiny_gguf.stat().st_size)
    time.sleep(1.1)
    assert t.push([tiny_gguf]) == remote  # cached by hash: not copied again
    assert t.run(["stat", "-c", "%Y.%s", path]).stdout == mtime
    back = t.pull(path, tmp_path / "back.gguf")
    assert back.read_bytes() == tiny_gguf.read_bytes()


def test_measure_over_ssh(sshd, tiny_gguf):
    rec = measure(tiny_gguf, SshTransport(**sshd), "llama.cpp", threads=1, repetitions=2, prompts=(8, 16), gen=4,
                  backend="python")
    assert rec["kind"] == "measurement" and rec["device"].startswith("ssh://") and rec["backend"] == "llama-cpp-python"
    assert [t["name"] for t in rec["tests"]] == ["pp8", "pp16", "tg4"]
    for t in rec["tests"]:
        assert len(t["samples_ts"]) == 2 and t["avg_ts"] > 0 and t["avg_ns"] > 0
    assert rec["summary"]["decode_tps"] > 0 and rec["peak_rss_bytes"] > rec["artifact_bytes"]
    assert rec["load_s"]["samples"] and rec["ttft_ms"]["avg"] > 0


def test_missing_runtime_and_missing_python(sshd, tiny_gguf):
    no_llama = SshTransport(**{**sshd, "python": "/usr/bin/python3"})
    if no_llama.run(["/usr/bin/python3", "-c", "import llama_cpp"]).returncode == 0:
        pytest.skip("the system python has llama_cpp")
    with pytest.raises(DeviceError, match="lacks the llama.cpp runtime: neither llama-bench nor llama-cpp-python"):
        measure(tiny_gguf, no_llama, "llama.cpp", repetitions=1, prompts=(8,), gen=2, backend="auto")
    with pytest.raises(DeviceError, match="has no /nonexistent/python3"):
        measure(tiny_gguf, SshTransport(**{**sshd, "python": "/nonexistent/python3"}), repetitions=1, prompts=(8,))


def test_not_enough_memory_is_checked_before_running(sshd, tiny_gguf):
    cal = Calibration(source="test", runtime_overhead_bytes=10**15)
    with pytest.raises(DeviceError, match="needs about .* usable"):
        measure(tiny_gguf, SshTransport(**sshd), calibration=cal)


def test_run_timeout(sshd):
    with pytest.raises(DeviceError, match="did not finish within 1 s"):
        SshTransport(**sshd).run(["sleep", "5"], timeout=1)


def test_unreachable_port_and_wrong_key(sshd, tmp_path, closed_port):
    closed = SshTransport(**{**sshd, "port": closed_port})
    with pytest.raises(DeviceError, match=r"cannot reach ssh://.*:\d+: .*[Cc]onnection refused"):
        closed.check()
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    with pytest.raises(DeviceError, match="Permission denied.*authorized_keys"):
        SshTransport(**{**sshd, "identity": str(tmp_path / "other")}).check()


def test_connect_timeout_on_silent_server(sshd):
    """A server that accepts TCP but never speaks SSH: ConnectTimeout ends the attempt."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port, conns = srv.getsockname()[1], []
    th = threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True)
    th.start()
    t0 = time.time()
    try:
        with pytest.raises(DeviceError, match="cannot reach .*(timed out|[Tt]imeout)"):
            SshTransport(**{**sshd, "port": port, "connect_timeout": 2}).check()
    finally:
        for c, _ in conns:
            c.close()
        srv.close()
    assert time.time() - t0 < 15
