"""The Ollama model store: blobs and a manifest written as `ollama create` writes them.

Format facts come from Ollama's Go source: server/create.go + manifest/*.go (blobs, layers,
manifest), types/model/config.go (config blob), api/types.go (parameter types), encoding/json
(the bytes of every JSON blob). Reading the Modelfile and the GGUF is export.ollama's job: this
module turns their results into files, lends it the atomic-file helpers, and never imports it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Protocol

from compress.atomic import atomic_write
from compress.errors import SlimkitError

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_OS, CONFIG_ARCH = "linux", "amd64"  # CreateHandler hard-codes both, whatever the host
_CHUNK = 1 << 20
# api/types.go Options + Runner: the JSON type FormatParams gives each PARAMETER.
_INT_PARAMS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep",
                         "draft_num_predict", "seed", "num_predict", "top_k", "repeat_last_n"})
_FLOAT_PARAMS = frozenset({"top_p", "min_p", "typical_p", "temperature", "repeat_penalty",
                           "presence_penalty", "frequency_penalty"})
_DEPRECATED_PARAMS = frozenset({"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only",
                                "use_mlock", "mirostat", "mirostat_tau", "mirostat_eta"})
_GO_TRUE, _GO_FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


class ModelInfo(Protocol):
    """What the config blob needs of the GGUF (export.ollama.GGUFInfo provides it)."""
    @property
    def architecture(self) -> str: ...
    @property
    def file_type(self) -> str: ...
    @property
    def parameter_count(self) -> int: ...


# -- model store ---------------------------------------------------------------------------------

def write_store(req: dict[str, Any], info: ModelInfo, name: tuple[str, str, str, str], root: Path) -> str:
    """blobs/sha256-HEX + manifests/HOST/NAMESPACE/MODEL/TAG, as server/create.go createModel;
    req from create_request, info read from req["model"]. Says what it wrote."""
    blobs, manifests = root / "blobs", root / "manifests"
    for d in (blobs, manifests):
        make_dirs(d, "the Ollama models directory")
    new: list[str] = []
    layers = [_blob(blobs, MEDIA_MODEL, new, src=req["model"])]
    layers += [_blob(blobs, m, new, req[k].encode()) for m, k in ((MEDIA_TEMPLATE, "template"),
                                                                   (MEDIA_SYSTEM, "system")) if req[k]]
    layers += [_blob(blobs, MEDIA_LICENSE, new, text.encode()) for text in req["license"]]
    if req["params"]:  # a Go map[string]any: encoded with sorted keys
        layers.append(_blob(blobs, MEDIA_PARAMS, new, _go_json(dict(sorted(req["params"].items())))))
    config = {"model_format": "gguf", "model_family": info.architecture,  # model.ConfigV2 order
              "model_families": [info.architecture], "model_type": _human_number(info.parameter_count),
              "file_type": info.file_type, "architecture": CONFIG_ARCH, "os": CONFIG_OS,
              # rootfs as written up to Ollama 0.32.7; later versions dropped it unread
              "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}}
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": _blob(blobs, MEDIA_CONFIG, new, _go_json(config)), "layers": layers}
    path = manifests.joinpath(*name)
    old = _digests(path)
    make_dirs(path.parent, "the Ollama models directory")
    atomic_write(path, _go_json(manifest))
    if old and os.environ.get("OLLAMA_NOPRUNE", "").strip().strip("\"'") in ("", *_GO_FALSE):
        in_use = set().union(*(_digests(p) for p in manifests.glob("*/*/*/*") if p.is_file()))
        for digest in old - in_use:  # Manifest.RemoveLayers of the replaced manifest
            (blobs / digest.replace(":", "-")).unlink(missing_ok=True)
    return f"{len(layers)} layers, {len(new)} new blobs, manifest {path.relative_to(root)}"


def create_request(cmds: list[tuple[str, str]], base: Path) -> dict[str, Any]:
    """Modelfile commands -> the CreateRequest fields a local-GGUF create uses (parser.go)."""
    req: dict[str, Any] = {"model": None, "template": "", "system": "", "license": [], "params": {}}
    for cmd, args in cmds:
        if cmd == "model":
            path = Path(os.path.expanduser(args))
            req["model"] = path if path.is_absolute() else base / path
        elif cmd in ("template", "system"):
            req[cmd] = args
        elif cmd == "license":
            req["license"].append(args)
        elif cmd in ("message", "adapter", "draft", "renderer", "parser", "requires"):
            raise SlimkitError(f"{cmd.upper()} is not supported by slimkit's store writer; "
                               "install Ollama and let `ollama create` read this Modelfile")
        elif cmd not in _DEPRECATED_PARAMS:  # parser.go skips those with a warning
            value = _param(cmd, args)
            req["params"][cmd] = req["params"].get(cmd, []) + value if cmd == "stop" else value
    if req["model"] is None or not req["model"].is_file():
        raise SlimkitError(f"FROM {req['model']} is not a local GGUF file; write the package again "
                           "or use `ollama create` for FROM <model name>")
    if not req["template"]:
        raise SlimkitError("the Modelfile has no TEMPLATE, which `ollama create` would guess from its "
                           "own list; keep slimkit's TEMPLATE line or install with ollama")
    return req


def _param(key: str, raw: str) -> Any:
    """One PARAMETER typed like api.FormatParams: int64, float32, bool or []string."""
    if key == "stop":
        return [raw]
    if key in _INT_PARAMS and re.fullmatch(r"[+-]?[0-9]+", raw) and abs(int(raw)) < 2**63:
        return int(raw)
    if key in _FLOAT_PARAMS and re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", raw):
        import numpy as np

        with np.errstate(over="ignore"):
            if np.isfinite(value := np.float32(raw)):
                return value
    if key == "use_mmap" and raw in _GO_TRUE + _GO_FALSE:
        return raw in _GO_TRUE
    kind = "invalid value" if key in _INT_PARAMS | _FLOAT_PARAMS | {"use_mmap"} else "unknown parameter"
    raise SlimkitError(f"PARAMETER {key} {raw}: {kind}; see Ollama's Modelfile reference")


def _go_json(obj: Any) -> bytes:
    """The bytes of Go's json.Encoder.Encode: compact, <>& escaped, float32 shortest, newline."""
    def enc(o: Any) -> str:
        if isinstance(o, dict):
            return "{" + ",".join(f"{enc(k)}:{enc(v)}" for k, v in o.items()) + "}"
        if isinstance(o, list):
            return "[" + ",".join(enc(v) for v in o) + "]"
        if type(o).__name__ == "float32":
            return _go_float32(o)
        s = json.dumps(o, ensure_ascii=False)
        for c in "<>&\u2028\u2029":
            s = s.replace(c, f"\\u{ord(c):04x}")
        return s
    return (enc(obj) + "\n").encode()


def _go_float32(x: Any) -> str:
    """encoding/json floatEncoder(32): shortest 'f' form, 'e' form (e-7) off [1e-6, 1e21)."""
    import numpy as np

    if x != 0 and not 1e-6 <= abs(x) < 1e21:
        return re.sub(r"e-0(\d)$", r"e-\1", np.format_float_scientific(x, unique=True, trim="-"))
    return np.format_float_positional(x, unique=True, trim="-")


def _human_number(n: int) -> str:
    """format.HumanNumber, the parameter size `ollama show` prints: 135M, 268.10M, 1.5B."""
    for unit, suffix, places in ((10**9, "B", 1), (10**6, "M", 2)):
        if n >= unit:
            return f"{n / unit:.{0 if n % unit == 0 else places}f}{suffix}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def _blob(blobs: Path, media: str, new: list[str], data: bytes | None = None,
          src: Path | None = None) -> dict[str, Any]:
    """A content-addressed blob and its manifest.Layer; an existing blob is kept if it verifies."""
    digest, size = _sha256(data, src)
    path = blobs / f"sha256-{digest}"
    if not (path.is_file() and path.stat().st_size == size and _sha256(None, path)[0] == digest):
        atomic_write(path, data, src)
        new.append(digest)
    return {"mediaType": media, "digest": f"sha256:{digest}", "size": size}


def _sha256(data: bytes | None, src: Path | None) -> tuple[str, int]:
    if src is None:
        return hashlib.sha256(data or b"").hexdigest(), len(data or b"")
    h, size = hashlib.sha256(), 0
    with open(src, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _digests(manifest: Path) -> set[str]:
    try:
        m = json.loads(manifest.read_bytes())
        return {layer["digest"] for layer in [m["config"], *m["layers"]]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


# -- atomic files --------------------------------------------------------------------------------

def make_dirs(path: Path, what: str) -> list[Path]:
    """mkdir -p; returns the directories it created, outermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty(missing)
        raise SlimkitError(f"cannot create {what} {path} ({exc.strerror or exc}); "
                           "choose a writable location") from None
    return missing


def remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()
