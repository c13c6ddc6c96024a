"""The data a distillation run sees, and in which order.

Window positions form one stream over epochs; epoch e visits the training windows in the order
randperm(N, seed + e). Optimizer step s uses stream positions [s*B, (s+1)*B); on a world of W
ranks with micro-batch m, micro-step j of rank r takes positions s*B + j*W*m + r*m + [0, m). The
order depends on the step only, so resuming at step s continues with exactly the windows an
uninterrupted run would have used, and a world of 2 sees the same global batch as a world of 1.
"""
from __future__ import annotations

import contextlib
import random
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from compress.data import Corpus, load_corpus, teacher_corpus
from compress.distill.config import DistillConfig
from compress.distill.parallel import Dist
from compress.distill.teachers import Teacher
from compress.errors import SlimkitError


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def window_order(positions: Sequence[int], n: int, seed: int) -> list[int]:
    return [int(_epoch_order(n, seed, p // n)[p % n]) for p in positions]


def micro_positions(step: int, micro: int, rank: int, world: int, cfg: DistillConfig) -> list[int]:
    start = step * cfg.batch_size + micro * world * cfg.micro_batch + rank * cfg.micro_batch
    return list(range(start, start + cfg.micro_batch))


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), read from /proc/cpuinfo;
    False where it cannot be read (then bf16 would be emulated, and slower than fp32)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def autocast_for(cfg: DistillConfig, device: torch.device) -> Callable[[], Any]:
    """bf16 autocast when asked for, or with --precision auto (the default) on CUDA with bf16 and on
    CPUs with native bf16: there (the 2-core AVX-512 BF16 EPYC, 135M student, cached top-64 KD,
    2 x 512 tokens a step) bf16 ran 2.0x (1 thread) and 1.92x (2 threads, distill.json
    `bf16_speedup`) as fast as fp32, with training losses within 0.3% and 1.7%
    (`bf16_loss_rel_diff`) of fp32's over the first steps; the tolerance: 2%."""
    auto = (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and cpu_has_bf16())
    use = cfg.precision == "bf16" or (cfg.precision == "auto" and auto)
    if not use:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def run_corpus(data: Sequence[str | Path], tokenizer: Any, teachers: Sequence[Teacher], cfg: DistillConfig,
            state: Path, dist: Dist, progress: bool) -> Corpus:
    if data:
        return load_corpus(data, tokenizer, cfg.seq_len, cfg.heldout_fraction, cfg.seed)
    if not teachers or teachers[0].model is None:
        raise SlimkitError("no --data and no teacher to sample a data-free corpus from; give --data FILE or a --teacher")
    path = state / "data_free_corpus.pt"  # sampled once (rank 0), reused by the other ranks and on resume
    if dist.main and not path.is_file():
        corpus = teacher_corpus(teachers[0].model, tokenizer, cfg.data_free_tokens or cfg.tokens, cfg.seq_len,
                                cfg.heldout_fraction, cfg.seed, progress=progress)
        state.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"train": corpus.train, "heldout": corpus.heldout, "source": corpus.source}, tmp)
        tmp.replace(path)
    dist.barrier()
    saved = torch.load(path, weights_only=True)
    return Corpus(saved["train"], saved["heldout"], saved["source"])


def _kept(n: int, cfg: DistillConfig) -> torch.Tensor | None:
    needed = cfg.steps * cfg.batch_size
    if needed >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:needed].sort().values


def training_windows(corpus: Corpus, cfg: DistillConfig) -> torch.Tensor:
    """The windows the budget will visit: all of them when the budget covers an epoch, else a
    seeded subset (so a logit cache is only built for windows that are used)."""
    keep = _kept(corpus.train.shape[0], cfg)
    return corpus.train if keep is None else corpus.train[keep]


def training_weights(corpus: Corpus, cfg: DistillConfig) -> torch.Tensor | None:
    """The per-token weights of training_windows (None for plain language modelling)."""
    if corpus.train_weights is None:
        return None
    keep = _kept(corpus.train.shape[0], cfg)
    return corpus.train_weights if keep is None else corpus.train_weights[keep]


def trim_padding(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns that carry no weight in any row of a prompt -> target batch. The
    model is causal, so the kept positions' logits and the loss are unchanged; only the compute of
    right padding is saved (one example per window: most of a window is padding)."""
    used = torch.nonzero(weights.ne(0).any(0))
    n = int(used[-1]) + 1 if used.numel() else 1
    return ids[:, :n], weights[:, :n]
