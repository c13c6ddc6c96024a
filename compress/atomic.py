"""Atomic file writes: a temp file in the same directory, fsync'ed, then os.replace, so a reader
(or a crash) sees the old file or the whole new one, never a part. Directories (checkpoints) are
replaced by renaming the old one aside, renaming the new one in, then removing the old one; a crash
between the first two renames leaves the old one aside, and `restore_aside` (called by loaders)
puts it back."""
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


ASIDE = ".old-"   # `.NAME.old-<hex>`: a directory renamed aside by replace_dir


def _after_step(step: str) -> None:
    """Called after each rename of replace_dir (tests kill the process here)."""


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the complete directory `tmp` at `out`: old -> aside, tmp -> out, remove aside. At every
    moment `out` is the old directory, the new one, or missing with the old one aside."""
    aside = out.parent / f".{out.name}{ASIDE}{uuid.uuid4().hex}"
    if out.exists():
        os.replace(out, aside)
        fsync_dir(out.parent)
        _after_step("aside")
    os.replace(tmp, out)
    fsync_dir(out.parent)
    _after_step("swap")
    shutil.rmtree(aside, ignore_errors=True)
    _after_step("cleanup")


def restore_aside(out: Path) -> None:
    """If `out` is missing because a replace_dir was killed after moving it aside, move it back;
    leftovers of finished replacements are removed."""
    asides = sorted(out.parent.glob(f".{out.name}{ASIDE}*")) if out.parent.is_dir() else []
    if not asides:
        return
    if not out.exists():
        os.replace(asides[-1], out)
        fsync_dir(out.parent)
        asides = asides[:-1]
    for a in asides:
        shutil.rmtree(a, ignore_errors=True)


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
