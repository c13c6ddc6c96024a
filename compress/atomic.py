"""Atomic file writes: a temp file in the same directory, fsync'ed, then os.replace, so a reader
(or a crash) sees the old file or the whole new one, never a part."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

COPY_CHUNK = 1 << 20
FILE_MODE = 0o644  # what open() gives under the usual umask 022


def atomic_write(path: Path, data: bytes | None = None, src: Path | None = None, link: bool = False) -> None:
    """Temp file in the same directory (a hard link of src if asked and possible, else a copy
    fsync'ed), then os.replace: readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp:
        try:
            if not (link and src is not None):
                raise OSError("copy")
            os.link(src, tmp)
        except OSError:  # other filesystem, or links refused: copy
            with open(tmp, "xb") as f:
                if src is None:
                    f.write(data or b"")
                else:
                    with open(src, "rb") as s:
                        shutil.copyfileobj(s, f, COPY_CHUNK)
            os.chmod(tmp, FILE_MODE)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path` for a writer that wants a file name; on success it is
    fsync'ed and renamed to `path`, on any failure removed (nothing half-written is left)."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
