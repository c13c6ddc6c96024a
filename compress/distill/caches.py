"""Teacher logit caches for a training run: which caches a teacher has, whether they are complete
(so the run never loads that teacher), and opening them (building what is missing with the
teacher's model)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from compress.distill.config import DistillConfig
from compress.distill.logit_cache import open_cache
from compress.distill.parallel import Dist
from compress.distill.teachers import Teacher, TeacherSpec
from compress.errors import SlimkitError


def _logits_fn(teacher: Teacher, device: torch.device, autocast: Callable[[], Any]) -> Callable:
    @torch.no_grad()
    def fn(ids: torch.Tensor) -> torch.Tensor:
        with autocast():
            return teacher.model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()
    return fn


def cache_names(i: int, spec: TeacherSpec, train: torch.Tensor, heldout: torch.Tensor, cfg: DistillConfig
                 ) -> list[tuple[str, torch.Tensor, float, int, bool]]:
    """(cache name, windows, temperature, k, sampled) of teacher i's logit caches: its training
    windows (top-k, or --sampled-logits draws), and for teacher 0 the held-out windows of the
    evaluation (top-k, T = 1). Empty when it is not cacheable."""
    if not cfg.logit_cache or spec.feature_weight > 0 or spec.relation_weight > 0:
        return []   # no cache asked, or the teacher's hidden states are needed online anyway
    if cfg.sampled_logits:
        names = [(f"teacher{i}-train-s{cfg.sampled_logits}-T{spec.temperature:g}-seed{cfg.seed}", train,
                  spec.temperature, cfg.sampled_logits, True)]
    else:
        names = [(f"teacher{i}-train-k{cfg.top_k}-T{spec.temperature:g}", train, spec.temperature, cfg.top_k, False)]
    if i == 0 and heldout.shape[0]:
        names.append((f"teacher0-heldout-k{cfg.top_k}", heldout[:cfg.eval_windows], 1.0, cfg.top_k, False))
    return names


def cache_identity(spec: TeacherSpec, student_tokenizer: Any) -> str:
    """Names a teacher in its logit caches without loading it: its source's content digest, its
    quantization and the tokenizer the cached ids come from (checked equal to the teacher's when
    the cache was built), so a complete cache serves a run that never loads the teacher."""
    from compress.distill.fingerprint import source_digest

    vocab = json.dumps(sorted(student_tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    tok = hashlib.sha256(vocab).hexdigest()[:16]
    return f"{source_digest(spec.source)}{'+' + spec.quantize if spec.quantize else ''} tokenizer:{tok}"


def cache_complete(i: int, spec: TeacherSpec, identity: str, train: torch.Tensor, heldout: torch.Tensor,
                    cfg: DistillConfig) -> bool:
    from compress.distill.logit_cache import LogitCache

    names = cache_names(i, spec, train, heldout, cfg)
    try:
        return bool(names) and all(
            c.check_meta() and not c.missing_chunks()
            for c in (LogitCache(Path(cfg.logit_cache) / n, w, teacher=identity, k=k, temperature=t, sampled=smp,
                                 seed=cfg.seed) for n, w, t, k, smp in names))
    except SlimkitError:   # a cache of another run: load the teacher; opening the cache then says what differs
        return False


def open_caches(teachers: Sequence[Teacher], identities: Sequence[str], train: torch.Tensor, heldout: torch.Tensor,
                 cfg: DistillConfig, dist: Dist, autocast: Callable[[], Any], progress: bool) -> tuple[list, Any]:
    """Per teacher: its training-logit cache when it is logit-only and a cache dir is given;
    plus the held-out cache of teacher 0 for evaluation (temperature 1). What is missing is built
    with the teacher's model (None when the caches were complete: nothing to build)."""
    caches: list[Any] = [None] * len(teachers)
    eval_cache = None
    for i, t in enumerate(teachers):
        fn = _logits_fn(t, dist.device, autocast) if t.model is not None else None
        for name, windows, temperature, k, sampled in cache_names(i, t.spec, train, heldout, cfg):
            cache = open_cache(cfg.logit_cache, name, windows, identities[i], k, temperature, fn, dist,
                               progress=progress, sampled=sampled, seed=cfg.seed)
            if name.startswith(f"teacher{i}-train"):
                caches[i] = cache
            else:
                eval_cache = cache
        if caches[i] is not None:
            t.model = None  # served by the cache from now on: free its memory
    return caches, eval_cache
