"""Fast, checked reading of a GGUF file's header: metadata, tensor table, extents.

gguf.GGUFReader maps every tensor and builds numpy views of each of the 262k Gemma tokens
(10-15 s); this parses the same little-endian v2/v3 layout (ggml's gguf_init_from_file_impl)
in well under a second. Every GGUF slimkit is handed goes through check() first: llama.cpp aborts
the whole process on some corrupt files, and numpy views over a truncated map fail far from
the cause.
"""
from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress import families
from compress.errors import SlimkitError

GGUF_MAGIC = b"GGUF"  # gguf.GGUF_MAGIC as bytes on disk (little-endian 0x46554747)
GGUF_MIN_VERSION = 2  # v1 used 32-bit counts; llama.cpp no longer reads it
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT, overridden by general.alignment


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] (row length) first
    type: int  # gguf.GGMLQuantizationType value
    offset: int  # absolute position of the data in the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _corrupt(path: Path, why: str) -> SlimkitError:
    return SlimkitError(f"{path} is not a valid GGUF file ({why}); it is truncated or corrupt: "
                        "copy or export it again")


def read_info(path: str | Path) -> GGUFInfo:
    """Header of a GGUF file, with every tensor checked to lie inside the file (cached)."""
    path = Path(path)
    if not path.is_file():
        raise SlimkitError(f"{path}: no such file; give the path of a .gguf file")
    if not is_gguf(path):
        raise _corrupt(path, "bad magic, expected 'GGUF'")
    st = path.stat()
    return _read_info(path.resolve(), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_info(path: Path, size: int, _mtime_ns: int) -> GGUFInfo:
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm, path)
    except SlimkitError:
        raise
    except (OSError, ValueError, KeyError, IndexError, OverflowError, struct.error, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from None


def _parse(mm: mmap.mmap, path: Path) -> GGUFInfo:
    import gguf
    import numpy as np

    vt, to_np = gguf.GGUFValueType, gguf.GGUFReader.gguf_scalar_to_np
    _magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", mm, 0)
    if version < GGUF_MIN_VERSION or version > 3:
        raise _corrupt(path, f"unsupported GGUF version {version}")
    pos = struct.calcsize("<IIQQ")

    def take(fmt: str) -> tuple:
        nonlocal pos
        pos += struct.calcsize(fmt)
        return struct.unpack_from(fmt, mm, pos - struct.calcsize(fmt))

    def string() -> str:
        nonlocal pos
        (n,) = take("<Q")
        if pos + n > len(mm):
            raise ValueError("a string runs past the end of the file")
        pos += n
        return mm[pos - n:pos].decode("utf-8", "surrogateescape")

    def value(vtype: int, count: int | None = None) -> Any:
        nonlocal pos
        if vtype == vt.STRING:
            return string()
        if vtype == vt.ARRAY:
            etype, n = take("<IQ")
            if n > len(mm):
                raise ValueError(f"array of {n} items is longer than the file")
            return [value(etype) for _ in range(n)] if etype in (vt.STRING, vt.ARRAY) else value(etype, n)
        dtype, n = np.dtype(to_np[vt(vtype)]).newbyteorder("<"), 1 if count is None else count
        pos += dtype.itemsize * n
        arr = np.frombuffer(mm, dtype, n, pos - dtype.itemsize * n)
        return arr.tolist() if count is not None else arr[0].item()

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("<I")[0])
    raw = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = take("<I")
        if n_dims > 4:  # GGML_MAX_DIMS
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        shape = take(f"<{n_dims}Q")
        ttype, offset = take("<IQ")
        raw.append((name, shape, ttype, offset))
    align = int(meta.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = (pos + align - 1) // align * align
    tensors = []
    for name, shape, ttype, offset in raw:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
        n_el = int(np.prod(shape, dtype=np.uint64)) if shape else 1
        if shape and shape[0] % block:
            raise ValueError(f"tensor {name!r}: row of {shape[0]} is not a whole number of blocks")
        n_bytes = n_el // block * type_size
        if data_start + offset + n_bytes > len(mm):
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        tensors.append(TensorInfo(name, tuple(shape), ttype, data_start + offset, n_bytes))
    return GGUFInfo(version, meta, tuple(tensors))


def check(path: str | Path) -> str:
    """Validate the file and return its architecture, or raise SlimkitError."""
    info = read_info(path)
    arch = info.get("general.architecture")
    if arch is None:
        raise _corrupt(Path(path), "no general.architecture key")
    if arch not in families.gguf_archs():
        raise SlimkitError(f"{path}: unsupported architecture {arch!r}; slimkit supports {families.supported()}")
    if not info.tensors:
        raise _corrupt(Path(path), "no tensors")
    st = Path(path).stat()
    problem = _vocab_problem_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if problem:
        raise _corrupt(Path(path), problem)
    return arch


@functools.lru_cache(maxsize=32)
def _vocab_problem_cached(path: str, size: int, mtime_ns: int) -> str | None:
    return vocab_problem(read_info(path).metadata)


SPECIAL_ID_KEYS = ("bos", "eos", "unknown", "separator", "padding", "eot", "eom", "mask")


def vocab_problem(meta: dict[str, Any]) -> str | None:
    """What llama.cpp would abort on in the tokenizer metadata (llama-vocab.cpp asserts, or a lookup
    that throws through its C API), or None: token strings that are not unique or not UTF-8, score
    / type arrays of another length, unknown token types, BPE merges naming unknown tokens or
    making one, special-token ids out of range."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None   # no vocabulary (an imatrix, a vocab-less file): nothing to check
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        return "tokenizer.ggml.tokens is not a list of strings"
    n = len(tokens)
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        arr = meta.get(key)
        if arr is not None and (not isinstance(arr, list) or len(arr) != n):
            return f"{key} has {len(arr) if isinstance(arr, list) else 'no'} entries for {n} tokens"
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None and any(not isinstance(t, int) or not 0 <= t <= 6 for t in types):
        return "tokenizer.ggml.token_type holds an unknown token type"
    try:
        "".join(tokens).encode("utf-8")   # the reader decodes with surrogateescape: bad bytes fail here
    except UnicodeEncodeError:
        bad = next(i for i, t in enumerate(tokens) if not _utf8(t))
        return f"token {bad} is not valid UTF-8"
    if len(set(tokens)) != n:
        seen: dict[str, int] = {}
        dup = next(i for i, t in enumerate(tokens) if seen.setdefault(t, i) != i)
        return f"token {dup} ({tokens[dup]!r}) repeats token {seen[tokens[dup]]}: token strings must be unique"
    if meta.get("tokenizer.ggml.model") == "gpt2":
        known = set(tokens)
        for i, merge in enumerate(meta.get("tokenizer.ggml.merges") or []):
            parts = merge.split(" ", 1) if isinstance(merge, str) else []
            if len(parts) != 2 or parts[0] not in known or parts[1] not in known or parts[0] + parts[1] not in known:
                return f"BPE merge {i} ({merge!r}) does not join two known tokens into a known token"
    for key in SPECIAL_ID_KEYS:
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        if tid is not None and (not isinstance(tid, int) or not 0 <= tid < n):
            return f"tokenizer.ggml.{key}_token_id {tid} is not a token id (0..{n - 1})"
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def file_type_name(path: str | Path) -> str:
    """general.file_type as llama.cpp's LLAMA_FTYPE name (e.g. MOSTLY_Q4_1), or 'unknown'."""
    import gguf

    try:
        return gguf.LlamaFileType(read_info(path).get("general.file_type")).name
    except (ValueError, TypeError):
        return "unknown"
