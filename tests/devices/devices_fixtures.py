"""Fixtures for the devices tests: tiny GGUF artifacts, a real OpenSSH server on 127.0.0.1, an isolated adb.

Not a conftest.py: the other test directories do `from conftest import ...`, and a second conftest.py (no
__init__.py anywhere) would take that module name. Test modules import what they use from here.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port  # noqa: E402

SSHD = "/usr/sbin/sshd"


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random llama exported to Q8_0 by slimkit's own GGUF writer (no validation: random weights)."""
    from tests.conftest import tiny_gguf_file, tiny_llama

    return tiny_gguf_file(tmp_path_factory, tiny_llama(seed=1, tie=False), "Q8_0", "tiny-q8_0.gguf")


@pytest.fixture(scope="session")
def tiny_gguf_tied(tmp_path_factory) -> Path:
    from tests.conftest import tiny_gguf_file, tiny_llama

    return tiny_gguf_file(tmp_path_factory, tiny_llama(seed=2, tie=True), "F16", "tiny-tied-f16.gguf")


@pytest.fixture(scope="session")
def tiny_gguf_gemma(tmp_path_factory) -> Path:
    """A tiny random gemma3 (3 layers) at F16: a third depth for the calibration tests."""
    from tests.conftest import tiny_gemma3, tiny_gguf_file

    return tiny_gguf_file(tmp_path_factory, tiny_gemma3(seed=4), "F16", "tiny-gemma3-f16.gguf")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1:<free port> accepting one generated key; yields transport kwargs."""
    missing = [t for t in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")) if not t or not os.path.exists(t)]
    if missing:
        pytest.skip("OpenSSH server/client not installed (make test installs openssh-server as root with apt-get)")
    if os.geteuid() != 0:
        pytest.skip("the test sshd runs as root (it must read the test's authorized_keys for the current user)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"Subsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "w"))
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
    kwargs = {"host": "127.0.0.1", "port": port, "user": pwd.getpwuid(os.geteuid()).pw_name,
              "identity": str(d / "client_key"), "python": sys.executable,
              "options": [f"UserKnownHostsFile={d / 'known_hosts'}", "StrictHostKeyChecking=accept-new"],
              "remote_root": str(d / "remote-cache")}  # the "remote" is this host: keep pushes in the test dir
    yield kwargs
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def adb_env():
    """The real adb client talking to its own server on a free port (killed afterwards)."""
    if not shutil.which("adb"):
        pytest.skip("adb not installed (make test installs it as root with apt-get)")
    env = {"ANDROID_ADB_SERVER_PORT": str(free_port())}
    yield env
    subprocess.run(["adb", "kill-server"], env={**os.environ, **env}, capture_output=True, timeout=30)
