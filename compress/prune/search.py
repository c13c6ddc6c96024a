"""Shape search: for a parameter target, which mix of depth and width to remove.

Candidates spread the removal over blocks (a share of it as whole blocks, or all of it: depth
only) and over width dims (FFN only; FFN + hidden; FFN + heads + hidden). Each candidate's dims are
solved so that its parameter count is the largest not above the target, then the candidates are
pruned for real (and, with recovery, repaired by compress.prune.recover) and ranked by next-token
loss on calibration windows (Minitron's and Sheared-LLaMA's observation: the best mix depends on
the model, so measure it).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch

from compress.prune.importance import Scores
from compress.prune.shape import ArchInfo, Shape, align_down, block_params, count_params, head_options
from compress.prune.surgery import apply_shape, top_units

DEPTH_SHARES = (0.0, 0.3)
WIDTH_MODES = ("ffn", "ffn+hidden", "ffn+heads+hidden")


@dataclass(frozen=True)
class Candidate:
    name: str
    shape: Shape
    params: int
    loss: float | None = None                 # calibration loss (after recovery when recovering)
    layers: tuple[int, ...] | None = None     # kept blocks (dense indices); None: by block score
    loss_pruned: float | None = None          # before recovery
    recover_seconds: float | None = None


def _width(dense: Shape, layers: int, s: float, mode: str, align: int) -> Shape:
    ffn = align_down(round(dense.ffn * s), align, dense.ffn) if "ffn" in mode else dense.ffn
    hidden = align_down(round(dense.hidden * s), align, dense.hidden) if "hidden" in mode else dense.hidden
    heads, kv = dense.heads, dense.kv_heads
    if "heads" in mode:
        opts = [o for o in head_options(dense) if o[0] <= max(1, round(dense.heads * s))]
        heads, kv = max(opts, key=lambda o: (o[0], o[1]))
    return Shape(layers=layers, hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv)


def _fill_ffn(shape: Shape, dense: Shape, a: ArchInfo, target: int, align: int, emb: bool) -> Shape:
    """Give the slack left under the target back to the FFN, one aligned step at a time."""
    step = max(1, align)
    while shape.ffn + step <= dense.ffn:
        bigger = Shape(shape.layers, shape.hidden, shape.ffn + step, shape.heads, shape.kv_heads)
        if count_params(bigger, a, embeddings=emb) > target:
            break
        shape = bigger
    return shape


def solve(dense: Shape, a: ArchInfo, target: int, *, depth_share: float, mode: str, align: int,
          embeddings: bool = False) -> Shape | None:
    """Largest shape of this depth share and width mode with at most `target` parameters (None: none fits)."""
    def n(s: Shape) -> int:
        return count_params(s, a, embeddings=embeddings)

    def depth(layers: int) -> Shape:
        return Shape(layers, dense.hidden, dense.ffn, dense.heads, dense.kv_heads)

    if mode == "depth":
        fits = [depth(k) for k in range(dense.layers, 0, -1) if n(depth(k)) <= target]
        return fits[0] if fits else None
    removal = n(dense) - target
    layers = dense.layers - int(round(depth_share * removal / block_params(dense, a)))
    layers = max(1, min(dense.layers, layers))
    if n(depth(layers)) <= target:
        return _fill_ffn(depth(layers), dense, a, target, align, embeddings)
    lo, hi = 0.0, 1.0
    if n(_width(dense, layers, lo, mode, align)) > target:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if n(_width(dense, layers, mid, mode, align)) <= target else (lo, mid)
    return _fill_ffn(_width(dense, layers, lo, mode, align), dense, a, target, align, embeddings)


def candidates(dense: Shape, a: ArchInfo, target: int, *, depth_only: bool, align: int,
               embeddings: bool = False) -> list[Candidate]:
    out: dict[Shape, Candidate] = {}
    plans = [("depth", 1.0, "depth")]
    if not depth_only:
        plans = [(f"{mode}, {int(share * 100)}% as blocks", share, mode)
                 for share in DEPTH_SHARES for mode in WIDTH_MODES] + plans
    for name, share, mode in plans:
        s = solve(dense, a, target, depth_share=share, mode=mode, align=align, embeddings=embeddings)
        if s is not None and s not in out:
            out[s] = Candidate(name, s, count_params(s, a, embeddings=embeddings))
    return list(out.values())


def calibration_loss(model: torch.nn.Module, windows: torch.Tensor, batch: int = 4) -> float:
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            ids = windows[i:i + batch]
            total += float(model(input_ids=ids, labels=ids).loss) * len(ids)
    return total / len(windows)


def rank(model: torch.nn.Module, cands: list[Candidate], scores: Scores, windows: torch.Tensor,
         progress: bool = True, recover_cfg=None, recover_top: int = 2,
         fit_windows: torch.Tensor | None = None) -> list[Candidate]:
    """Prune a copy of the model to each candidate and measure its calibration loss (lowest first).

    With `recover_cfg` (a compress.prune.recover.RecoverConfig), the `recover_top` candidates of
    lowest loss after pruning, and the best depth-only one, are also repaired, and rank by their
    loss after recovery. Recovery costs a few forward passes per candidate, so not every one gets
    it, and the ranking fits on `fit_windows` (other calibration windows than the `windows` the
    loss is measured on, when there are enough), so a candidate is not ranked on its own fit."""
    from tqdm.auto import tqdm

    pruned = []
    for c in tqdm(cands, desc="shape search", disable=not progress or len(cands) < 2):
        trial = copy.deepcopy(model)
        apply_shape(trial, c.shape, scores, layers=list(c.layers) if c.layers is not None else None)
        pruned.append(dataclasses.replace(c, loss=calibration_loss(trial, windows)))
        del trial
    pruned.sort(key=lambda c: c.loss)
    if recover_cfg is None:
        return pruned
    depth = [c for c in pruned if c.name.startswith("depth")][:1]
    chosen = {id(c) for c in pruned[:recover_top] + depth}
    fit = fit_windows if fit_windows is not None and fit_windows.numel() else windows
    out = [_recovered(model, c, scores, fit, windows, recover_cfg) if id(c) in chosen else c
           for c in tqdm(pruned, desc="recovery search", disable=not progress)]
    return sorted(out, key=lambda c: c.loss)


def _recovered(model: torch.nn.Module, c: Candidate, scores: Scores, fit: torch.Tensor, windows: torch.Tensor,
               cfg) -> Candidate:
    from compress.prune.recover import recover

    trial = copy.deepcopy(model)
    kept = apply_shape(trial, c.shape, scores, layers=list(c.layers) if c.layers is not None else None)
    start = time.perf_counter()
    recover(model, trial, kept, fit, cfg, progress=False)
    return dataclasses.replace(c, loss=calibration_loss(trial, windows), loss_pruned=c.loss,
                               recover_seconds=round(time.perf_counter() - start, 2))


def with_spans(cands: list[Candidate], n_layers: int, dist: torch.Tensor, allow_first: bool,
               block_scores: torch.Tensor | None = None) -> list[Candidate]:
    """Candidates that remove blocks, given blocks chosen for bridging (compress.prune.bridge): a
    depth-only candidate becomes three (one contiguous span, two spans, ShortGPT's block scores),
    ranked after bridging; a mixed one takes the span choice of least span distance."""
    from compress.prune.bridge import choose_spans

    out: list[Candidate] = []
    for c in cands:
        remove = n_layers - c.shape.layers
        options = choose_spans(dist, n_layers, remove, allow_first=allow_first) if remove > 0 else []
        if not options:
            out.append(c)
        elif c.name == "depth":
            out += [Candidate(f"depth, {name}", c.shape, c.params, layers=tuple(kept)) for name, kept, _ in options]
            by_score = top_units(block_scores, c.shape.layers) if block_scores is not None else None
            if by_score is None or all(by_score != kept for _, kept, _ in options):   # not a duplicate
                out.append(Candidate("depth, block scores", c.shape, c.params))
        else:
            out.append(Candidate(f"{c.name} ({options[0][0]})", c.shape, c.params, layers=tuple(options[0][1])))
    return out
