"""Sanity checks and metadata of .gguf files, before anything heavier opens them.

llama.cpp aborts the whole process on some corrupt files, and numpy views over a truncated
memory map fail far from the cause; so every GGUF slimkit is handed goes through check() first.
"""
from __future__ import annotations

import functools
from pathlib import Path

from compress.errors import SlimkitError

GGUF_MAGIC = b"GGUF"  # gguf.GGUF_MAGIC as bytes on disk (little-endian 0x46554747)
SUPPORTED_ARCHS = ("llama", "gemma3")


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _corrupt(path: Path, why: str) -> SlimkitError:
    return SlimkitError(f"{path} is not a valid GGUF file ({why}); it is truncated or corrupt: "
                        "copy or export it again")


def reader(path: Path):
    """A gguf.GGUFReader over the file, with every tensor checked to lie inside the file.

    Cached per (path, size, mtime): the reader takes seconds on a 262k-token vocabulary.
    """
    path = Path(path)
    if not path.is_file():
        raise SlimkitError(f"{path}: no such file; give the path of a .gguf file")
    st = path.stat()
    return _reader(path.resolve(), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _reader(path: Path, size: int, _mtime_ns: int):
    import gguf
    if not is_gguf(path):
        raise _corrupt(path, "bad magic, expected 'GGUF'")
    try:
        r = gguf.GGUFReader(path)
        for t in r.tensors:
            if t.data_offset + t.n_bytes > size or t.data.size * t.data.itemsize != t.n_bytes:
                raise _corrupt(path, f"tensor {t.name} runs past the end of the file")
    except SlimkitError:
        raise
    except Exception as exc:  # the reader raises many types on garbage (ValueError, IndexError, ...)
        raise _corrupt(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from None
    return r


def field_value(r, key: str, default=None):
    """Scalar or string value of a metadata key (gguf.ReaderField.contents())."""
    f = r.fields.get(key)
    return default if f is None else f.contents()


def check(path: Path) -> str:
    """Validate the file and return its architecture, or raise SlimkitError."""
    r = reader(path)
    arch = field_value(r, "general.architecture")
    if arch is None:
        raise _corrupt(Path(path), "no general.architecture key")
    if arch not in SUPPORTED_ARCHS:
        raise SlimkitError(f"{path}: unsupported architecture {arch!r}; slimkit supports {', '.join(SUPPORTED_ARCHS)}")
    if not r.tensors:
        raise _corrupt(Path(path), "no tensors")
    return arch


def file_type_name(path: Path) -> str:
    """general.file_type as llama.cpp's LLAMA_FTYPE name (e.g. MOSTLY_Q4_1), or 'unknown'."""
    import gguf

    value = field_value(reader(path), "general.file_type")
    try:
        return gguf.LlamaFileType(value).name
    except (ValueError, TypeError):
        return "unknown"
