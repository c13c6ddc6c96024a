"""The prune verb: config, plan (shape + why), prune."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from compress.errors import SlimkitError
from compress.prune.importance import CALIBRATED, METHODS, Scores, score
from compress.prune.recover import DEFAULT_DAMP, RecoverConfig
from compress.prune.search import Candidate, calibration_loss, candidates, rank, with_spans
from compress.prune.shape import ArchInfo, Shape, count_params, shape_of
from compress.prune.surgery import apply_shape

SHAPE_KEYS = ("layers", "hidden", "ffn", "heads", "kv_heads")
DEFAULT_RECOVER_TOKENS = 8192   # 16 windows of 512: the fits have ~10x more rows than unknowns per output
SEARCH_FIT_WINDOWS = 4         # windows a candidate's trial recovery fits on (not those it is ranked on)
# `--calib self`: calibration text sampled from the model itself (self-calibration, Williams et al.
# 2024). With only the head of TinyStories to calibrate on, recovery fits that one domain and loses
# elsewhere (prune.json: in-domain perplexity near dense, WikiText far from it); the model's own
# samples cover what it knows.
SELF_CALIB = "self"
DEFAULT_MODE = "ffn+heads+hidden, 0% as blocks"   # the plan when there is no calibration text to search with


@dataclass(frozen=True)
class PruneConfig:
    VERSION: ClassVar[int] = 1                # of the to_dict/from_dict form (compress.config_io)
    method: str = "minitron"
    target_params: float | None = None        # (0, 1]: fraction kept; > 1: absolute count
    shape: dict[str, int] = field(default_factory=dict)   # explicit dims (layers, hidden, ffn, heads, kv_heads)
    count_embeddings: bool = False
    calib: str | None = None                  # calibration text file, or "self" (sampled from the model)
    calib_tokens: int = 16384
    calib_ctx: int = 512
    search_windows: int = 8                   # calibration windows used to rank candidate shapes
    align: int = 32                           # width multiple (32: Q4_0/Q8_0 blocks; 256: K-quant rows; 1: off)
    depth_metric: str = "influence"           # block ranking: "influence" (ShortGPT) or "ppl" (drop one block)
    seed: int = 0
    recover: str | None = None                # "ls" (least-squares refits + bridges) or "none"; None: ls with calib
    recover_tokens: int | None = None         # calibration tokens the recovery fits on (first windows); None: 8192
    recover_damp: float = DEFAULT_DAMP        # ridge toward the pruned weights, relative to mean diag(X^T X)
    bridge: str = "ls"                        # depth bridges: least squares or cosine objective
    recover_target: str = "local"             # "local" (dense modules on the pruned stream) or "dense" outputs

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
        if self.recover not in (None, "ls", "none"):
            raise SlimkitError(f"--recover must be ls or none, got {self.recover!r}")
        if self.recover == "ls" and not self.calib:
            raise SlimkitError("--recover ls fits on calibration activations: give --calib FILE (or --recover none)")
        if self.recover_tokens is not None and not self.calib_ctx <= self.recover_tokens <= self.calib_tokens:
            raise SlimkitError(f"--recover-tokens {self.recover_tokens} must be between one window (--calib-ctx "
                               f"{self.calib_ctx}) and --calib-tokens {self.calib_tokens}")
        self.recover_config()   # validates --recover-damp and --bridge

    @property
    def recovering(self) -> bool:
        """Least-squares recovery after pruning: asked for, or by default when there is calibration text."""
        return self.recover == "ls" or (self.recover is None and bool(self.calib))

    @property
    def recover_windows(self) -> int:
        tokens = self.recover_tokens if self.recover_tokens is not None else min(DEFAULT_RECOVER_TOKENS, self.calib_tokens)
        return max(1, tokens // self.calib_ctx)

    def recover_config(self) -> RecoverConfig:
        return RecoverConfig(damp=self.recover_damp, bridge=self.bridge, target=self.recover_target)

    def to_dict(self) -> dict[str, Any]:
        from compress import config_io

        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        from compress import config_io

        return config_io.from_dict(cls, d)


@dataclass
class Plan:
    dense: Shape
    shape: Shape
    params: int                      # counted like the target (non-embedding unless count_embeddings)
    dense_params: int
    embeddings_counted: bool
    candidates: list[Candidate]
    layers: tuple[int, ...] | None = None   # kept blocks when chosen for bridging (else by block score)

    @property
    def removed_fraction(self) -> float:
        return 1 - self.params / self.dense_params

    def to_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.as_dict(), "shape": self.shape.as_dict(), "params": self.params,
                "dense_params": self.dense_params, "embeddings_counted": self.embeddings_counted,
                "removed_fraction": round(self.removed_fraction, 6),
                "candidates": [_candidate_dict(c) for c in self.candidates]}


def _candidate_dict(c: Candidate) -> dict[str, Any]:
    d = {"name": c.name, "shape": c.shape.as_dict(), "params": c.params, "calib_loss": c.loss}
    if c.layers is not None:
        d["layers"] = list(c.layers)
    if c.loss_pruned is not None:
        d["calib_loss_pruned"], d["recover_seconds"] = c.loss_pruned, c.recover_seconds
    return d


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


def calibration_windows(cfg: PruneConfig, tokenizer, model: torch.nn.Module | None = None) -> torch.Tensor:
    """The calibration windows (n, calib_ctx): the head of the --calib text, or with `--calib self`
    text sampled from the model being pruned (compress.calib.model_windows, seeded by --seed)."""
    from compress.evaluate import adds_bos, make_windows, read_text, tokenize_plain

    n = cfg.calib_tokens // cfg.calib_ctx
    if cfg.calib == SELF_CALIB:
        from compress.calib import model_windows

        if model is None:
            raise SlimkitError("--calib self samples its text from the model: pass the model")
        return model_windows(model, tokenizer, (n + 1) * cfg.calib_ctx, cfg.calib_ctx, cfg.seed, batch_size=8)[0][:n]
    text = read_text(cfg.calib)[: cfg.calib_tokens * 12]     # ~4 characters a token; leaves room
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
        search = windows[: cfg.search_windows] if windows is not None else None
        if search is not None and scores is not None and cfg.recovering:
            cands = _bridged(model, cands, dense, search, scores)
        if len(cands) > 1 and search is not None and scores is not None:
            fit = windows[cfg.search_windows: cfg.search_windows + SEARCH_FIT_WINDOWS]
            cands = rank(model, cands, scores, search, progress=progress,
                         recover_cfg=cfg.recover_config() if cfg.recovering else None, fit_windows=fit)
        elif len(cands) > 1:
            cands = sorted(cands, key=lambda c: c.name != DEFAULT_MODE)
    best = cands[0]
    return Plan(dense, best.shape, best.params, dense_params, emb, cands, best.layers)


def _bridged(model: torch.nn.Module, cands: list[Candidate], dense: Shape, windows: torch.Tensor,
             scores: Scores) -> list[Candidate]:
    """Depth candidates with blocks chosen for bridging (contiguous spans; none from block 0 when the
    embedding is tied, as there is nothing to fold its bridge into)."""
    from compress.prune.bridge import span_distances

    removals = [dense.layers - c.shape.layers for c in cands]
    if max(removals, default=0) <= 0:
        return cands
    dist = span_distances(model, windows, max(removals))
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    return with_spans(cands, dense.layers, dist, allow_first=not tied, block_scores=scores.layers)


def prune(source: Any, cfg: PruneConfig, *, plan_only: bool = False, progress: bool = True,
          on_plan: Callable[[Plan], None] | None = None, scores: Scores | None = None) -> PruneResult:
    """Prune `source` (a source string or a Checkpoint; its model is modified in place) per `cfg`.

    `scores` (from `compress.prune.importance.score` on the same model and method) skips the
    calibration pass, e.g. to sweep several targets from one calibration."""
    from compress.checkpoint import Checkpoint, load

    if cfg.calib and cfg.calib != SELF_CALIB and not Path(cfg.calib).is_file():
        raise SlimkitError(f"{cfg.calib}: no such calibration text file")
    ckpt = source if isinstance(source, Checkpoint) else load(source)
    model = ckpt.model
    if not isinstance(model, torch.nn.Module):
        raise SlimkitError("pruning needs a full model checkpoint (a HF directory, a .gguf or a zoo name)")
    ArchInfo.of(model.config)                                   # unsupported architecture: fail before work
    model.eval()
    windows = calibration_windows(cfg, ckpt.tokenizer, model) if cfg.calib else None
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
    dense_model = copy.deepcopy(model) if cfg.recovering else None
    layers = plan.layers
    stage["kept"] = apply_shape(model, plan.shape, scores, layers=list(layers) if layers is not None else None)
    actual = _counted_params(model, cfg.count_embeddings)
    if actual != plan.params:
        raise RuntimeError(f"pruned model has {actual} parameters, the plan said {plan.params}")
    metrics["params"] = actual
    metrics["params_total"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if dense_model is not None and windows is not None:
        from compress.prune.recover import recover

        metrics["calib_loss_pruned"] = calibration_loss(model, windows[: cfg.search_windows])
        report = recover(dense_model, model, stage["kept"], windows[: cfg.recover_windows],
                         cfg.recover_config(), progress=progress)
        del dense_model
        stage["recovery"] = _summary(report)
        metrics["recovery_seconds"] = report["seconds"]
    if windows is not None:
        metrics["calib_loss"] = calibration_loss(model, windows[: cfg.search_windows])
    stage["metrics"] = metrics
    return PruneResult(dataclasses.replace(ckpt, model=model), plan, stage)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The recovery report for the history: totals per Linear kind, and every bridge."""
    kinds: dict[str, dict[str, Any]] = {}
    for f in report["fits"]:
        k = kinds.setdefault(f["name"], {"fits": 0, "applied": 0, "rel_err_before": 0.0, "rel_err_after": 0.0})
        k["fits"] += 1
        k["applied"] += int(f["applied"])
        k["rel_err_before"] += f["rel_err_before"]
        k["rel_err_after"] += f["rel_err_after"]
    for k in kinds.values():   # sums -> means over the blocks
        k["rel_err_before"] /= k["fits"]
        k["rel_err_after"] /= k["fits"]
    return {"method": "ls", "damp": report["damp"], "tokens": report["tokens"], "seconds": report["seconds"],
            "linears": kinds, "bridges": report["bridges"]}


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
