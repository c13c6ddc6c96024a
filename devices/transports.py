"""How to reach a target: this host, a machine over ssh (OpenSSH client), an Android device over adb.

Every transport pushes files (cached by content hash, so a second run does not copy the artifact again),
runs a command with a timeout and pulls files back. Errors are one line: what failed and what to do.
We shell out to the OpenSSH and adb clients rather than use a Python SSH library so that the user's own
ssh configuration (keys, agents, ProxyJump, known_hosts) applies unchanged.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from devices.errors import DeviceError

CONNECT_TIMEOUT = 10.0   # seconds to establish a connection
RUN_TIMEOUT = 900.0      # seconds a benchmark may run on the target
REMOTE_CACHE = ".cache/slimkit-devices"  # under the remote home directory (ssh)
ADB_ROOT = "/data/local/tmp/slimkit"


def file_hash(paths: list[Path]) -> str:
    """sha256 of the files' contents (and names), first 16 hex digits: the push cache key."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Transport:
    """Base: push(files) -> remote dir, run(argv) -> Result, pull(remote, local)."""

    name = "transport"
    python = "python3"

    def describe(self) -> str:
        return self.name

    def run(self, argv: list[str], timeout: float = RUN_TIMEOUT) -> Result:
        raise NotImplementedError

    def push(self, files: list[Path]) -> str:
        """Copy files into one remote directory named by their hash (skipped when present); its path."""
        raise NotImplementedError

    def pull(self, remote: str, local: Path) -> Path:
        raise NotImplementedError

    def check(self) -> None:
        """Raise DeviceError when the target cannot be reached."""
        self.run(["true"], timeout=CONNECT_TIMEOUT + 5)

    def meminfo_available(self) -> float | None:
        """MemAvailable of the target in bytes, or None when it does not say (not Linux)."""
        r = self.run(["cat", "/proc/meminfo"], timeout=CONNECT_TIMEOUT + 5)
        for line in r.stdout.splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
        return None


def _local_run(argv: list[str], timeout: float, what: str, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{what} did not finish within {timeout:.0f} s; check the target or raise --timeout") \
            from None
    except FileNotFoundError:
        raise DeviceError(f"{argv[0]} not found; install it (e.g. apt-get install {_package(argv[0])})") from None


def _package(tool: str) -> str:
    return {"ssh": "openssh-client", "scp": "openssh-client", "adb": "adb"}.get(tool, tool)


class LocalTransport(Transport):
    name = "local"

    def __init__(self, python: str | None = None) -> None:
        import sys

        self.python = python or sys.executable

    def run(self, argv: list[str], timeout: float = RUN_TIMEOUT) -> Result:
        r = _local_run(argv, timeout, f"local command {argv[0]}")
        return Result(r.returncode, r.stdout, r.stderr)

    def push(self, files: list[Path]) -> str:
        dirs = {p.resolve().parent for p in files}
        if len(dirs) != 1:
            raise DeviceError("local push expects files from one directory")
        return str(dirs.pop())  # nothing to copy on this host

    def pull(self, remote: str, local: Path) -> Path:
        if Path(remote).resolve() != local.resolve():
            shutil.copyfile(remote, local)
        return local

    def meminfo_available(self) -> float | None:
        from devices.specs import meminfo

        return meminfo()[1]


@dataclass
class SshTransport(Transport):
    """OpenSSH client with key authentication only (BatchMode: never prompts)."""

    host: str
    user: str | None = None
    port: int = 22
    identity: str | None = None
    options: list[str] = field(default_factory=list)   # extra `-o Key=Value` settings
    connect_timeout: float = CONNECT_TIMEOUT
    python: str = "python3"
    remote_root: str = REMOTE_CACHE  # push cache directory on the target (relative: under its home)
    name: str = "ssh"

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def describe(self) -> str:
        return f"ssh://{self.target}:{self.port}"

    def _opts(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(self.connect_timeout)}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]
        if self.identity:
            opts += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        for o in self.options:
            opts += ["-o", o]
        return opts

    def _ssh(self, remote_cmd: str, timeout: float, stdin_file: Path | None = None,
             stdout_file: Path | None = None) -> Result:
        """Run remote_cmd; stdin from / stdout to a file (binary) when given. Exit 255 = ssh itself failed."""
        argv = ["ssh", *self._opts(), "-p", str(self.port), self.target, remote_cmd]
        what = f"ssh to {self.describe()}"
        if stdin_file is None and stdout_file is None:
            r = _local_run(argv, timeout, what)
            code, out, err = r.returncode, r.stdout, r.stderr
        else:
            try:
                with open(stdin_file or os.devnull, "rb") as fin, open(stdout_file or os.devnull, "wb") as fout:
                    r = subprocess.run(argv, stdin=fin, stdout=fout, stderr=subprocess.PIPE, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DeviceError(f"{what}: copying did not finish within {timeout:.0f} s") from None
            code, out, err = r.returncode, "", r.stderr.decode(errors="replace")
        if code == 255:  # ssh's own failure: connection, authentication, host key
            last = (err.strip().splitlines() or ["no message"])[-1]
            raise DeviceError(f"cannot reach {self.describe()}: {last}; check the host, port and that your key is "
                              "in the target's authorized_keys")
        return Result(code, out, err)

    def run(self, argv: list[str], timeout: float = RUN_TIMEOUT) -> Result:
        return self._ssh(shlex.join(argv), timeout)

    def push(self, files: list[Path]) -> str:
        rdir = f"{self.remote_root}/{file_hash(files)}"
        names = " ".join(shlex.quote(p.name) for p in files)
        probe = self._ssh(f"mkdir -p {shlex.quote(rdir)} && cd {shlex.quote(rdir)} && pwd && for f in {names}; do "
                          "test -f \"$f\" || echo \"$f\"; done", self.connect_timeout + 30)
        if probe.returncode != 0 or not probe.stdout.strip():
            raise DeviceError(f"cannot create {rdir} on {self.describe()}: {probe.stderr.strip()[-200:]}")
        remote_dir, *missing = probe.stdout.splitlines()
        for p in files:
            if p.name in missing:  # write under a temporary name and rename: no half-copied file is ever cached
                part, final = shlex.quote(f"{remote_dir}/.{p.name}.part"), shlex.quote(f"{remote_dir}/{p.name}")
                r = self._ssh(f"cat > {part} && mv {part} {final}", RUN_TIMEOUT, stdin_file=p)
                if r.returncode != 0:
                    raise DeviceError(f"could not copy {p.name} to {self.describe()}: {r.stderr.strip()[-200:]}")
        return remote_dir

    def pull(self, remote: str, local: Path) -> Path:
        tmp = local.with_name(local.name + ".part")
        r = self._ssh(f"cat {shlex.quote(remote)}", RUN_TIMEOUT, stdout_file=tmp)
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise DeviceError(f"could not read {remote} on {self.describe()}: {r.stderr.strip()[-200:]}")
        os.replace(tmp, local)
        return local


@dataclass
class AdbTransport(Transport):
    """Android Debug Bridge: push to /data/local/tmp, `adb shell`, pull."""

    serial: str
    python: str = "python3"  # e.g. Termux's python; adb's own shell has none
    name: str = "adb"
    env: dict | None = None  # environment for the adb client (tests point it at their own server port)

    def describe(self) -> str:
        return f"adb://{self.serial}"

    def _adb(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env} if self.env else None
        return _local_run(["adb", "-s", self.serial, *args], timeout, f"adb on {self.serial}", env=env)

    def check(self) -> None:
        r = self._adb(["get-state"], CONNECT_TIMEOUT + 20)
        if r.returncode != 0 or r.stdout.strip() != "device":
            why = (r.stderr.strip().splitlines() or [r.stdout.strip() or "no answer"])[-1]
            raise DeviceError(f"adb device {self.serial} is not available ({why}); connect it with USB debugging "
                              "enabled (see `adb devices`), or give a profile name to predict instead")

    def run(self, argv: list[str], timeout: float = RUN_TIMEOUT) -> Result:
        r = self._adb(["shell", shlex.join(argv)], timeout)
        if r.returncode != 0 and "device" in r.stderr and ("not found" in r.stderr or "offline" in r.stderr):
            raise DeviceError(f"adb device {self.serial}: {r.stderr.strip().splitlines()[-1]}; connect it or "
                              "give a profile name to predict instead")
        return Result(r.returncode, r.stdout, r.stderr)

    def push(self, files: list[Path]) -> str:
        rdir = f"{ADB_ROOT}/{file_hash(files)}"
        self.check()
        listing = self.run(["ls", rdir], timeout=CONNECT_TIMEOUT + 20).stdout.split()
        for p in files:
            if p.name not in listing:
                part = f"{rdir}/.{p.name}.part"
                r = self._adb(["push", str(p), part], RUN_TIMEOUT)
                if r.returncode != 0:
                    raise DeviceError(f"adb push of {p.name} to {self.serial} failed: {r.stderr.strip()[-200:]}")
                self.run(["mv", part, f"{rdir}/{p.name}"], timeout=CONNECT_TIMEOUT + 20)
        return rdir

    def pull(self, remote: str, local: Path) -> Path:
        r = self._adb(["pull", remote, str(local)], RUN_TIMEOUT)
        if r.returncode != 0:
            raise DeviceError(f"adb pull of {remote} from {self.serial} failed: {r.stderr.strip()[-200:]}")
        return local


def parse_device(device: str, *, identity: str | None = None, python: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> Transport | None:
    """local | ssh://user@host[:port] | adb://SERIAL -> a Transport; anything else (a profile name) -> None."""
    if device == "local":
        return LocalTransport(python)
    if device.startswith("ssh://"):
        url = urllib.parse.urlsplit(device)
        try:
            port = url.port or 22
        except ValueError:
            raise DeviceError(f"bad port in {device}; use ssh://user@host[:port]") from None
        if not url.hostname:
            raise DeviceError(f"no host in {device}; use ssh://user@host[:port]")
        return SshTransport(url.hostname, url.username, port, identity=identity, python=python or "python3",
                            connect_timeout=connect_timeout)
    if device.startswith("adb://"):
        serial = device[len("adb://"):]
        if not serial:
            raise DeviceError("no serial in adb://; use adb://SERIAL as listed by `adb devices`")
        return AdbTransport(serial, python=python or "python3")
    return None
