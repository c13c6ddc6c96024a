"""Offline teacher logits, computed once, reused across epochs and runs, in one of two forms:
- top-k: per token the top-k logits and the log-sum-exp of the other V - k (DistillKit's form);
- sampled: per token K token ids drawn from the teacher's distribution (losses.SampledLogits, an
  unbiased estimate of the KL gradient), seeded per chunk so a rebuilt chunk is the same.
At equal bytes per token K = 2k + 2 (top-k: k uint16 ids + k float16 logits + one float32;
sampled: K uint16 ids), before compression.

Layout of one cache (one teacher, one split of one corpus):
    DIR/<name>/meta.json          teacher identity, k, temperature, seq_len, windows, data sha256
    DIR/<name>/chunk-000000.npz   windows [0, C): indices (uint16/int32), values (float16),
                                  rest_lse (float32) [top-k only], sha256 of those windows' token ids
Chunks are independent, so ranks build disjoint chunks in parallel (chunk j on rank j % world)
and each rank later reads only the chunks of its own windows; the cache does not depend on the
world size. meta.json must match the run (else a one-line error says what differs) and each
chunk is checked against the token ids of its windows when it is read. Files are written
atomically; an interrupted build resumes where it stopped. numpy's savez_compressed (zip
deflate) does the compression.
"""
from __future__ import annotations

import io
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from compress.atomic import atomic_write
from compress.data import windows_sha256
from compress.distill.losses import SampledLogits, SparseLogits
from compress.errors import SlimkitError

CACHE_FORMAT = 1
CHUNK_WINDOWS = 8  # windows per chunk file: small enough that a rank reads little it does not need
LRU_CHUNKS = 64


class LogitCache:
    def __init__(self, directory: str | Path, windows: torch.Tensor, *, teacher: str, k: int,
                 temperature: float, chunk_windows: int = CHUNK_WINDOWS, sampled: bool = False, seed: int = 0) -> None:
        if k < 1:
            raise SlimkitError(f"--top-k / --sampled-logits must be at least 1, got {k}")
        self.dir = Path(directory)
        self.windows = windows
        self.chunk_windows = chunk_windows
        self.meta = {"format": CACHE_FORMAT, "kind": "sampled" if sampled else "topk", "teacher": teacher, "k": k,
                     **({"seed": seed} if sampled else {}), "temperature": float(temperature),
                     "seq_len": int(windows.shape[1]), "windows": int(windows.shape[0]),
                     "chunk_windows": chunk_windows, "data_sha256": windows_sha256(windows)}
        self._lru: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.windows.shape[0] / self.chunk_windows)

    def chunk_path(self, j: int) -> Path:
        return self.dir / f"chunk-{j:06d}.npz"

    def check_meta(self) -> bool:
        """True when meta.json exists and matches this run; raise when it exists and differs."""
        path = self.dir / "meta.json"
        if not path.is_file():
            return False
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise SlimkitError(f"{path} is unreadable; delete {self.dir} to rebuild the logit cache") from None
        for key, want in self.meta.items():
            if found.get(key) != want:
                what = "data it was built from" if key == "data_sha256" else key
                raise SlimkitError(f"logit cache {self.dir} does not match this run: {what} is {found.get(key)!r}, "
                                   f"this run needs {want!r}; delete it or give another --logit-cache directory")
        return True

    def write_meta(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / "meta.json", json.dumps(self.meta, indent=2).encode())

    def missing_chunks(self, rank: int = 0, world: int = 1) -> list[int]:
        return [j for j in range(rank, self.n_chunks, world) if not self.chunk_path(j).is_file()]

    def build(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], rank: int = 0, world: int = 1,
              batch_size: int = 4, progress: bool = False) -> int:
        """Compute this rank's missing chunks with logits_fn((B, L) ids) -> (B, L, V) logits.
        Returns the number of chunks written."""
        todo = self.missing_chunks(rank, world)
        bar = None
        if progress and todo:
            from tqdm import tqdm

            n = sum(self.windows[j * self.chunk_windows:(j + 1) * self.chunk_windows].numel() for j in todo)
            bar = tqdm(total=n, desc="teacher logit cache", unit="tok")
        for j in todo:
            ids = self.windows[j * self.chunk_windows:(j + 1) * self.chunk_windows]
            if self.sampled:
                gen = torch.Generator().manual_seed(self.meta["seed"] * 1_000_003 + j)
                parts = [SampledLogits.draw(logits_fn(ids[i:i + batch_size]), self.meta["k"], self.meta["temperature"],
                                            gen) for i in range(0, len(ids), batch_size)]
            else:
                parts = [SparseLogits.from_dense(logits_fn(ids[i:i + batch_size]), self.meta["k"],
                                                 self.meta["temperature"]) for i in range(0, len(ids), batch_size)]
            self._write_chunk(j, ids, parts)
            if bar is not None:
                bar.update(ids.numel())
        if bar is not None:
            bar.close()
        return len(todo)

    @property
    def sampled(self) -> bool:
        return self.meta["kind"] == "sampled"

    def _write_chunk(self, j: int, ids: torch.Tensor, parts: Sequence[SparseLogits | SampledLogits]) -> None:
        index_dtype = np.uint16 if self.meta_vocab_fits_uint16(parts) else np.int32
        buf = io.BytesIO()
        arrays = {"indices": torch.cat([p.indices for p in parts]).numpy().astype(index_dtype),
                  "sha256": np.frombuffer(windows_sha256(ids).encode(), dtype=np.uint8)}
        if not self.sampled:
            arrays.update(values=torch.cat([p.values for p in parts]).numpy().astype(np.float16),
                          rest_lse=torch.cat([p.rest_lse for p in parts]).numpy().astype(np.float32))
        np.savez_compressed(buf, **arrays)
        atomic_write(self.chunk_path(j), buf.getvalue())

    @staticmethod
    def meta_vocab_fits_uint16(parts: Sequence[SparseLogits | SampledLogits]) -> bool:
        return max(int(p.indices.max()) for p in parts) < 2**16

    def _chunk(self, j: int) -> dict[str, np.ndarray]:
        if j in self._lru:
            self._lru.move_to_end(j)
            return self._lru[j]
        path = self.chunk_path(j)
        try:
            names = ("indices", "sha256") if self.sampled else ("indices", "values", "rest_lse", "sha256")
            with np.load(path) as z:
                data = {name: z[name] for name in names}
        except (OSError, ValueError, KeyError) as exc:
            raise SlimkitError(f"logit cache chunk {path} is missing or unreadable ({exc}); delete it to rebuild") from None
        ids = self.windows[j * self.chunk_windows:(j + 1) * self.chunk_windows]
        if data["sha256"].tobytes().decode() != windows_sha256(ids):
            raise SlimkitError(f"logit cache chunk {path} was built from other token ids; delete {self.dir} to rebuild")
        self._lru[j] = data
        if len(self._lru) > LRU_CHUNKS:
            self._lru.popitem(last=False)
        return data

    def get(self, window_ids: Sequence[int]) -> SparseLogits | SampledLogits:
        """Sparse teacher logits for the given window indices: (B, L, k) / (B, L), or the draws (B, L, K)."""
        rows = []
        for w in window_ids:
            data = self._chunk(int(w) // self.chunk_windows)
            r = int(w) % self.chunk_windows
            if self.sampled:
                rows.append((data["indices"][r],))
            else:
                rows.append((data["indices"][r], data["values"][r], data["rest_lse"][r]))
        if self.sampled:
            return SampledLogits(torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.int64)),
                                 self.meta["temperature"])
        return SparseLogits(torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.int64)),
                            torch.from_numpy(np.stack([r[1] for r in rows]).astype(np.float32)),
                            torch.from_numpy(np.stack([r[2] for r in rows])),
                            self.meta["temperature"])


def open_cache(directory: str | Path, name: str, windows: torch.Tensor, teacher: Any, k: int, temperature: float,
               logits_fn: Callable[[torch.Tensor], torch.Tensor] | None, dist: Any, batch_size: int = 4,
               progress: bool = False, sampled: bool = False, seed: int = 0) -> LogitCache:
    """Open (building what is missing, in parallel over ranks) the cache DIR/name.

    `dist` is compress.distill.parallel.Dist: rank 0 validates/writes meta.json, every rank builds
    its chunks, and all wait until the whole cache is there."""
    cache = LogitCache(Path(directory) / name, windows, teacher=teacher, k=k, temperature=temperature,
                       sampled=sampled, seed=seed)
    if dist.rank == 0 and not cache.check_meta():
        cache.write_meta()
    dist.barrier()
    if dist.rank != 0:
        cache.check_meta()
    if cache.missing_chunks(dist.rank, dist.world):
        if logits_fn is None:
            raise SlimkitError(f"logit cache {cache.dir} is incomplete and no teacher model is loaded to fill it")
        cache.build(logits_fn, dist.rank, dist.world, batch_size, progress and dist.rank == 0)
    dist.barrier()
    if cache.missing_chunks():
        raise SlimkitError(f"logit cache {cache.dir} is still missing chunks after the build; check the disk")
    return cache
