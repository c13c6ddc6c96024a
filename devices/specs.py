"""Device profiles (devices/profiles/*.yaml) and the run-time probe that fills in the `local` profile."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from devices.errors import DeviceError

PROFILES_DIR = Path(__file__).parent / "profiles"
EXTRA_DIR_ENV = "SLIMKIT_DEVICE_PROFILES"  # a directory of the user's own profile YAML files
PROBE = "probe"


@dataclass(frozen=True)
class DeviceSpec:
    """What the predictor needs about a device (units: GB = 1e9 bytes, GB/s, GFLOP/s)."""

    name: str
    description: str
    os: str
    transport: str
    total_gb: float
    usable_gb: float
    bandwidth_gbs: float
    cores: int
    big_cores: int
    cpu_name: str = ""
    ghz: float | None = None
    compute: dict[str, float | None] = field(default_factory=dict)
    llama_cpp_backend: str = "cpu"
    address: str | None = None  # optional: ssh://... or adb://... where this device can be reached
    measured: dict[str, Any] = field(default_factory=dict)  # what probe_local measured, when it did

    @property
    def cpu_fp32_gflops(self) -> float:
        value = self.compute.get("cpu_fp32_gflops")
        if not value:
            raise DeviceError(f"profile {self.name} has no compute.cpu_fp32_gflops; add it to its YAML file")
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _profile_files() -> dict[str, Path]:
    files = {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"))}
    extra = os.environ.get(EXTRA_DIR_ENV)
    if extra:
        files.update({p.stem: p for p in sorted(Path(extra).glob("*.yaml"))})
    return files


def profile_names() -> list[str]:
    return sorted(_profile_files())


def _number(doc: dict, key: str, where: Path) -> Any:
    value = doc.get(key)
    if value is None or (value != PROBE and not isinstance(value, (int, float))):
        raise DeviceError(f"{where}: '{key}' must be a number (or 'probe'); fix the profile file")
    return value


def load_profile(name: str, threads: int | None = None) -> DeviceSpec:
    """The named profile; `probe` fields (the `local` profile) are measured on this host with `threads`."""
    import yaml

    files = _profile_files()
    if name not in files:
        raise DeviceError(f"unknown device profile '{name}'; known: {', '.join(sorted(files))} "
                          "(or use local, ssh://user@host[:port], adb://SERIAL)")
    path = files[name]
    try:
        doc = yaml.safe_load(path.read_text())
        mem, cpu, compute = doc["memory"], doc["cpu"], dict(doc.get("compute") or {})
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise DeviceError(f"{path}: not a device profile ({exc}); see devices/profiles/raspberry-pi-5.yaml") from None
    spec = DeviceSpec(
        name=doc.get("name", name), description=doc.get("description", ""), os=str(doc.get("os", "")),
        transport=str(doc.get("transport", "none")), total_gb=_number(mem, "total_gb", path),
        usable_gb=_number(mem, "usable_gb", path), bandwidth_gbs=_number(doc, "bandwidth_gbs", path),
        cores=_number(cpu, "cores", path), big_cores=_number(cpu, "big_cores", path),
        cpu_name=str(cpu.get("name", "")), ghz=cpu.get("ghz"), compute=compute,
        llama_cpp_backend=str(doc.get("llama_cpp_backend", "cpu")), address=doc.get("address"))
    if PROBE in (spec.total_gb, spec.usable_gb, spec.bandwidth_gbs, spec.cores, spec.big_cores) \
            or compute.get("cpu_fp32_gflops") == PROBE:
        spec = probe_local(spec, threads)
    return spec


def meminfo() -> tuple[float, float]:
    """(total, available) bytes of this host's memory."""
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024
        return float(fields["MemTotal"]), float(fields.get("MemAvailable", fields["MemFree"]))
    except (OSError, KeyError, ValueError, IndexError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return float(total), float(total)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """STREAM-copy style: best of `repeats` copies of a `mib` MiB array, counting bytes read + written.

    numpy's copy is a memcpy; written by hand only because no maintained Python package measures memory
    bandwidth (STREAM itself is C)."""
    import numpy as np

    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def measure_gemm_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """Best-of float32 n x n matmul throughput with the BLAS limited to `threads` threads."""
    import numpy as np

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise DeviceError("probing this host needs threadpoolctl: pip install 'slimkit[devices]'") from None
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    with threadpool_limits(limits=threads):
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def probe_local(spec: DeviceSpec, threads: int | None = None) -> DeviceSpec:
    """Fill the `probe` fields of a profile by measuring this host (threads: those a run will use)."""
    threads = threads or min(4, os.cpu_count() or 1)
    total, avail = meminfo()
    measured = {"threads": threads, "total_gb": total / 1e9, "usable_gb": avail / 1e9,
                "bandwidth_gbs": measure_bandwidth_gbs(), "cpu_fp32_gflops": measure_gemm_gflops(threads),
                "cores": os.cpu_count() or 1, "cpu_name": _cpu_name(), "os": platform.platform()}
    compute = dict(spec.compute)
    compute["cpu_fp32_gflops"] = round(measured["cpu_fp32_gflops"], 2)
    return replace(spec, os=measured["os"], total_gb=round(measured["total_gb"], 3),
                   usable_gb=round(measured["usable_gb"], 3), bandwidth_gbs=round(measured["bandwidth_gbs"], 3),
                   cores=measured["cores"], big_cores=threads, cpu_name=measured["cpu_name"], ghz=None,
                   compute=compute, measured=measured)
