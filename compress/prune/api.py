"""The prune verb: config, plan (shape + why), prune."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from compress.errors import SlimkitError
from compress.prune.importance import CALIBRATED, METHODS, Scores, score
from compress.prune.search import Candidate, calibration_loss, candidates, rank
from compress.prune.shape import ArchInfo, Shape, count_params, shape_of
from compress.prune.surgery import apply_shape

SHAPE_KEYS = ("layers", "hidden", "ffn", "heads", "kv_heads")
DEFAULT_MODE = "ffn+heads+hidden, 0% as blocks"   # the plan when there is no calibration text to search with


@dataclass(frozen=True)
class PruneConfig:
    method: str = "minitron"
    target_params: float | None = None        # (0, 1]: fraction kept; > 1: absolute count
    shape: dict[str, int] = field(default_factory=dict)   # explicit dims (layers, hidden, ffn, heads, kv_heads)
    count_embeddings: bool = False
    calib: str | None = None                  # calibration text file
    calib_tokens: int = 16384
    calib_ctx: int = 512
    search_windows: int = 8                   # calibration windows used to rank candidate shapes
    align: int = 32                           # width multiple (32: Q4_0/Q8_0 blocks; 256: K-quant rows; 1: off)
    depth_metric: str = "influence"           # block ranking: "influence" (ShortGPT) or "ppl" (drop one block)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SlimkitError(f"unknown pruning method {self.method!r}: choose one of {', '.join(METHODS)}")
        if (self.target_params is None) == (not self.shape):
            raise SlimkitError("give either --target-params N|RATIO or explicit shape flags "
                               "(--layers --hidden --ffn --heads --kv-heads), not both and not neither")
        if self.target_params is not None and not self.target_params > 0:
            raise SlimkitError(f"--target-params must be a ratio in (0, 1] or a count > 1, got {self.target_params}")
        bad = set(self.shape) - set(SHAPE_KEYS)
        if bad:
            raise SlimkitError(f"unknown shape keys {sorted(bad)}: use {', '.join(SHAPE_KEYS)}")
        if self.method == "block-influence" and set(self.shape) - {"layers"}:
            raise SlimkitError("block-influence removes whole blocks only: give --layers, or use a width method")
        if self.method in CALIBRATED and not self.calib:
            raise SlimkitError(f"method {self.method} needs calibration text: give --calib FILE")
        if self.align < 1 or self.calib_tokens < self.calib_ctx or self.calib_ctx < 2:
            raise SlimkitError("--align must be >= 1 and --calib-tokens at least one window (--calib-ctx)")
        if self.depth_metric not in ("influence", "ppl"):
            raise SlimkitError(f"--depth-metric must be influence or ppl, got {self.depth_metric!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        return cls(**d)


@dataclass
class Plan:
    dense: Shape
    shape: Shape
    params: int                      # counted like the target (non-embedding unless count_embeddings)
    dense_params: int
    embeddings_counted: bool
    candidates: list[Candidate]

    @property
    def removed_fraction(self) -> float:
        return 1 - self.params / self.dense_params

    def to_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.as_dict(), "shape": self.shape.as_dict(), "params": self.params,
                "dense_params": self.dense_params, "embeddings_counted": self.embeddings_counted,
                "removed_fraction": round(self.removed_fraction, 6),
                "candidates": [{"name": c.name, "shape": c.shape.as_dict(), "params": c.params, "calib_loss": c.loss}
                               for c in self.candidates]}


@dataclass
class PruneResult:
    checkpoint: Any                  # compress.checkpoint.Checkpoint (its model was pruned in place)
    plan: Plan
    stage: dict[str, Any]            # history entry for checkpoint.save(..., stage=...)


def _target(cfg: PruneConfig, dense_params: int) -> int:
    t = cfg.target_params
    n = int(round(dense_params * t)) if t <= 1 else int(t)
    if n > dense_params:
        what = "parameters" if cfg.count_embeddings else "non-embedding parameters"
        raise SlimkitError(f"--target-params {t:g} is more than the model's {dense_params} {what}: "
                           "give a smaller target (a ratio in (0, 1] keeps that fraction)")
    return n


def calibration_windows(cfg: PruneConfig, tokenizer) -> torch.Tensor:
    from compress.evaluate import adds_bos, make_windows, read_text, tokenize_plain

    text = read_text(cfg.calib)[: cfg.calib_tokens * 12]     # ~4 characters a token; leaves room
    n = cfg.calib_tokens // cfg.calib_ctx
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    windows = make_windows(tokenize_plain(tokenizer, text), cfg.calib_ctx, n, bos)
    return torch.tensor(windows, dtype=torch.long)


def make_plan(model: torch.nn.Module, cfg: PruneConfig, scores: Scores | None, windows: torch.Tensor | None,
              progress: bool = True) -> Plan:
    arch = ArchInfo.of(model.config)
    dense = shape_of(model.config)
    emb = cfg.count_embeddings
    dense_params = count_params(dense, arch, embeddings=emb)
    if cfg.shape:
        shape = Shape(**{**dense.as_dict(), **cfg.shape})
        shape.fits_in(dense)
        cands = [Candidate("explicit shape", shape, count_params(shape, arch, embeddings=emb))]
    else:
        target = _target(cfg, dense_params)
        cands = candidates(dense, arch, target, depth_only=cfg.method == "block-influence", align=cfg.align,
                           embeddings=emb)
        if not cands:
            raise SlimkitError(f"no shape of this model has at most {target} parameters with --align {cfg.align}: "
                               "give a larger --target-params or a smaller --align")
        if len(cands) > 1 and windows is not None and scores is not None:
            cands = rank(model, cands, scores, windows[: cfg.search_windows], progress=progress)
        elif len(cands) > 1:
            cands = sorted(cands, key=lambda c: c.name != DEFAULT_MODE)
    best = cands[0]
    return Plan(dense, best.shape, best.params, dense_params, emb, cands)


def prune(source: Any, cfg: PruneConfig, *, plan_only: bool = False, progress: bool = True,
          on_plan: Callable[[Plan], None] | None = None, scores: Scores | None = None) -> PruneResult:
    """Prune `source` (a source string or a Checkpoint; its model is modified in place) per `cfg`.

    `scores` (from `compress.prune.importance.score` on the same model and method) skips the
    calibration pass, e.g. to sweep several targets from one calibration."""
    from compress.checkpoint import Checkpoint, load

    if cfg.calib and not Path(cfg.calib).is_file():
        raise SlimkitError(f"{cfg.calib}: no such calibration text file")
    ckpt = source if isinstance(source, Checkpoint) else load(source)
    model = ckpt.model
    if not isinstance(model, torch.nn.Module):
        raise SlimkitError("pruning needs a full model checkpoint (a HF directory, a .gguf or a zoo name)")
    ArchInfo.of(model.config)                                   # unsupported architecture: fail before work
    model.eval()
    windows = calibration_windows(cfg, ckpt.tokenizer) if cfg.calib else None
    if cfg.shape:   # validate explicit shapes before the (long) calibration pass
        make_plan(model, cfg, None, None, progress=False)
    if scores is None:
        scores = score(model, cfg.method, windows, depth_metric=cfg.depth_metric, seed=cfg.seed, progress=progress)
    plan = make_plan(model, cfg, scores, windows, progress=progress)
    if on_plan:
        on_plan(plan)
    stage: dict[str, Any] = {"stage": "prune", "config": cfg.to_dict(), "plan": plan.to_dict()}
    if plan_only:
        return PruneResult(ckpt, plan, stage)
    metrics: dict[str, Any] = {}
    if windows is not None:
        metrics["calib_loss_dense"] = calibration_loss(model, windows[: cfg.search_windows])
    stage["kept"] = apply_shape(model, plan.shape, scores)
    actual = _counted_params(model, cfg.count_embeddings)
    if actual != plan.params:
        raise RuntimeError(f"pruned model has {actual} parameters, the plan said {plan.params}")
    metrics["params"] = actual
    metrics["params_total"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if windows is not None:
        metrics["calib_loss"] = calibration_loss(model, windows[: cfg.search_windows])
    stage["metrics"] = metrics
    return PruneResult(dataclasses.replace(ckpt, model=model), plan, stage)


def _counted_params(model: torch.nn.Module, embeddings: bool) -> int:
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    if embeddings:
        return total
    emb = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        emb.add(id(head.weight))
    return total - sum(unique[i].numel() for i in emb if i in unique)
