"""Importance matrices in llama.cpp's own file formats, keyed by GGUF tensor names.

GGUF format (what current `llama-imatrix` writes, tools/imatrix/imatrix.cpp save_imatrix):
  general.type = "imatrix", imatrix.datasets (string array), imatrix.chunk_count (u32),
  imatrix.chunk_size (u32); per weight two F32 tensors `<name>.in_sum2` (ne = [n_in, n_mat]: the raw
  sums of x^2) and `<name>.counts` (ne = [1, n_mat]: tokens summed). No general.architecture.
Legacy .dat (save_imatrix_legacy): int32 n_entries; per entry int32 len, name, int32 ncall, int32 nval,
  float32 values = (sum / count) * ncall; then int32 chunk count, int32 len, dataset name.
Readers return `Imatrix`; `Imatrix.values(name)` is what llama-quantize hands the quantizer
(tools/quantize/quantize.cpp load_imatrix: sum / count, or value / ncall for a legacy file).

Like llama-imatrix (which records blk.* and, with --process-output, output.weight), entries are
the Linear weights of the blocks and an untied output head; a tied head is the token embedding,
which llama.cpp quantizes without an imatrix.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import SlimkitError

GENERAL_TYPE = "imatrix"
KV_DATASETS = "imatrix.datasets"  # common/imatrix-loader.h LLM_KV_IMATRIX_*
KV_CHUNK_COUNT = "imatrix.chunk_count"
KV_CHUNK_SIZE = "imatrix.chunk_size"
SUM2, COUNTS = ".in_sum2", ".counts"


@dataclass
class Imatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # GGUF name -> (n_in,) float32 raw sums of x^2
    counts: dict[str, float] = field(default_factory=dict)  # tokens summed (legacy: ncall)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False

    def values(self, name: str) -> np.ndarray:
        """The importance llama.cpp's quantizer receives for `name`: mean x^2 per input column."""
        count = self.counts[name]
        if count <= 0:
            return np.ones_like(self.sums[name]) if not self.legacy else self.sums[name].copy()
        return (self.sums[name] / np.float32(count)).astype(np.float32)

    def check(self, widths: dict[str, int], path: str | os.PathLike = "the imatrix") -> None:
        """Refuse an imatrix made for another model: every expected weight present with its width."""
        missing = [n for n in widths if n not in self.sums]
        if missing:
            raise SlimkitError(f"{path} has no entry for {missing[0]} ({len(missing)} of {len(widths)} weights "
                               "missing): it was made for another model; compute one with `slimkit imatrix`")
        for name, width in widths.items():
            got = self.sums[name].size
            if got != width:
                raise SlimkitError(f"{path}: {name} has {got} values but the model's weight has {width} input "
                                   "columns: it was made for another model; compute one with `slimkit imatrix`")
            if not np.isfinite(self.sums[name]).all():
                raise SlimkitError(f"{path}: {name} holds non-finite values; recompute the imatrix")


def from_stats(stats: Any, gguf_names: dict[str, str], datasets: list[str], chunk_size: int) -> Imatrix:
    """compress.calib.CalibStats (HF module names) -> Imatrix (GGUF names); gguf_names maps the
    HF weight names to record ({'model.layers.0.mlp.down_proj.weight': 'blk.0.ffn_down.weight'})."""
    im = Imatrix(datasets=list(datasets), chunk_size=int(chunk_size), legacy=False)
    for hf_weight, name in gguf_names.items():
        module = hf_weight.removesuffix(".weight")
        if module not in stats.sum_sq:
            continue
        im.sums[name] = stats.sum_sq[module].numpy().astype(np.float32)
        im.counts[name] = float(stats.count[module])
    im.chunk_count = int(stats.tokens // chunk_size) if chunk_size else 0
    return im


def write(im: Imatrix, path: str | os.PathLike) -> None:
    """Write the GGUF imatrix format (llama-imatrix's save_imatrix), atomically."""
    import gguf

    from compress.atomic import atomic_path
    from export.gguf.writer import finish

    with atomic_path(Path(path)) as tmp:
        w = gguf.GGUFWriter(tmp, "llama")
        w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none
        w.add_string(gguf.Keys.General.TYPE, GENERAL_TYPE)
        w.add_array(KV_DATASETS, list(im.datasets))
        w.add_uint32(KV_CHUNK_COUNT, int(im.chunk_count))
        w.add_uint32(KV_CHUNK_SIZE, int(im.chunk_size))
        for name in sorted(im.sums):  # deterministic order, as save_imatrix sorts names
            w.add_tensor(name + SUM2, im.sums[name].astype(np.float32).reshape(1, -1))  # ne = [n_in, 1]
            w.add_tensor(name + COUNTS, np.array([[im.counts[name]]], dtype=np.float32))  # ne = [1, 1]
        finish(w)


def write_legacy(im: Imatrix, path: str | os.PathLike) -> None:
    """The legacy .dat layout (save_imatrix_legacy): values (sum / count) * ncall with
    ncall = ceil(count / chunk_size)."""
    from compress.atomic import atomic_write

    chunk = max(1, im.chunk_size)
    out = [struct.pack("<i", len(im.sums))]
    for name in sorted(im.sums):
        count = im.counts[name]
        ncall = int(-(-count // chunk)) if not im.legacy else int(count)
        vals = im.sums[name] if im.legacy else (im.sums[name] / np.float32(count)) * np.float32(ncall)
        raw = name.encode()
        out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, vals.size),
                vals.astype("<f4").tobytes()]
    dataset = (im.datasets[-1] if im.datasets else "").encode()
    out += [struct.pack("<i", im.chunk_count), struct.pack("<i", len(dataset)), dataset]
    atomic_write(Path(path), b"".join(out))


def read(path: str | os.PathLike) -> Imatrix:
    """Read a GGUF imatrix, or a legacy .dat one; a corrupt file is a one-line SlimkitError."""
    p = Path(path)
    if not p.is_file():
        raise SlimkitError(f"imatrix file {p} does not exist")
    with open(p, "rb") as f:
        magic = f.read(4)
    try:
        return _read_gguf(p) if magic == b"GGUF" else _read_legacy(p)
    except SlimkitError:
        raise
    except Exception as exc:  # noqa: BLE001 (any parse failure of a damaged file)
        raise SlimkitError(f"{p} is not a readable imatrix ({type(exc).__name__}: {exc}); "
                           "recompute it with `slimkit imatrix`") from None


def _read_gguf(p: Path) -> Imatrix:
    import gguf

    r = gguf.GGUFReader(p)

    def field_value(key: str) -> Any:
        f = r.fields.get(key)
        return None if f is None else f.contents()

    if field_value(gguf.Keys.General.TYPE) != GENERAL_TYPE:
        raise SlimkitError(f"{p} is a GGUF file but not an imatrix (general.type is "
                           f"{field_value(gguf.Keys.General.TYPE)!r}); give an imatrix file")
    im = Imatrix(datasets=list(field_value(KV_DATASETS) or []), chunk_count=int(field_value(KV_CHUNK_COUNT) or 0),
                 chunk_size=int(field_value(KV_CHUNK_SIZE) or 0))
    tensors = {t.name: t for t in r.tensors}
    for tname, t in tensors.items():
        if not tname.endswith(SUM2):
            continue
        name = tname[:-len(SUM2)]
        counts = tensors.get(name + COUNTS)
        if counts is None:
            raise SlimkitError(f"{p}: {name} has sums but no counts; the file is damaged")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or counts.tensor_type != gguf.GGMLQuantizationType.F32:
            raise SlimkitError(f"{p}: sums and counts of {name} must be F32")
        c = np.asarray(counts.data, dtype=np.float32).reshape(-1)
        if c.size != 1:
            raise SlimkitError(f"{p}: {name} has {c.size} expert counts; slimkit handles dense models only")
        im.sums[name] = np.array(t.data, dtype=np.float32).reshape(-1)
        im.counts[name] = float(np.round(c[0]))
    if not im.sums:
        raise SlimkitError(f"{p} holds no imatrix entries")
    return im


def _read_legacy(p: Path) -> Imatrix:
    data = p.read_bytes()
    at = 0

    def take(fmt: str) -> tuple:
        nonlocal at
        size = struct.calcsize(fmt)
        if at + size > len(data):
            raise SlimkitError(f"{p} is truncated (neither a GGUF nor a complete legacy .dat imatrix)")
        out = struct.unpack_from(fmt, data, at)
        at += size
        return out

    (n_entries,) = take("<i")
    if not 0 < n_entries < 1_000_000:
        raise SlimkitError(f"{p} is not an imatrix file (GGUF or legacy .dat)")
    im = Imatrix(legacy=True)
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise SlimkitError(f"{p} is damaged (an entry name of length {length})")
        name = data[at:at + length].decode("utf-8", errors="strict")
        at += length
        ncall, nval = take("<ii")
        if nval < 1:
            raise SlimkitError(f"{p} is damaged ({name} has {nval} values)")
        im.sums[name] = np.array(take(f"<{nval}f"), dtype=np.float32)
        im.counts[name] = float(ncall)
    if at < len(data):  # optional trailer: chunk count and dataset name
        (im.chunk_count,) = take("<i")
        if at < len(data):
            (length,) = take("<i")
            if length > 0:
                im.datasets = [data[at:at + length].decode("utf-8", errors="replace")]
    return im
