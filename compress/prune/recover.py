"""Least-squares recovery of a pruned model from calibration activations: minutes, no training.

Sequential over blocks, as SparseGPT is: the pruned block is fed what the already-repaired pruned
blocks before it produce, the dense block the dense model's own hidden states, both with the same
attention masks and rotary embeddings (compress.calib.capture).

Width (the FLAP / SlimGPT family): the Linears of a pruned block are re-fitted in the order the
block computes them, so that each one's output matches the dense Linear's on its kept output units:
  q/k/v and gate/up  (only when hidden channels were removed: their input is the pruned residual)
  o_proj             (its input lost heads, or the residual it writes lost channels)
  down_proj          (its input lost FFN channels, or its output rows did)
Each fit is ridge least squares toward the pruned (sliced) weight W0, solved in float64:
  min_W sum_t |W x_t + b - y_t|^2 + lam |W - W0|^2,   lam = damp * mean diag(X^T X)
  => W (X^T X + lam I) = Y^T X + lam W0
x: the pruned Linear's input, y: the dense Linear's output. Its target is either the dense model's
own (`target="dense"`: the Linear's output on the dense hidden states, so each block also corrects
what the blocks before it got wrong) or local (`target="local"`, FLAP / SlimGPT: the dense module
-- the MLP for down_proj, the attention for o_proj -- run on the pruned block's own input, so the
fit only compensates the removed channels; used where the residual width is kept). A Linear with a bias re-fits it too;
none is added. A fit that does not lower the calibration error is not applied, so recovery never
raises a layer's reconstruction error on the calibration tokens.

Depth (linear bridges, compress.prune.bridge): a run of removed blocks is replaced by a map T
folded into the block before it. Its target is the hidden state leaving the run: the dense
model's (`target="dense"`), or, local, the removed dense blocks run on the pruned block's own
output (ReplaceMe's form, applied sequentially).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.calib import Collector, capture, decoder_layers, run_block
from compress.errors import SlimkitError
from compress.prune import bridge as bridges

OBJECTIVES = ("ls", "cosine")   # depth bridges: least squares (ReplaceMe's closed form) or cosine distance
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")


DEFAULT_DAMP = 0.1   # measured on SmolLM2 (0.01 .. 10): 0.1 kept WikiText closest while fitting the calibration domain


TARGETS = ("local", "dense")
LOCAL_PARENTS = {"self_attn.o_proj": "self_attn", "mlp.down_proj": "mlp"}   # the module a local target runs


@dataclass(frozen=True)
class RecoverConfig:
    damp: float = DEFAULT_DAMP  # ridge strength relative to the mean diagonal of X^T X
    bridge: str = "ls"          # objective of the depth bridges: ls or cosine
    target: str = "local"       # local (dense modules on the pruned input: measured better) or the dense outputs

    def __post_init__(self) -> None:
        if not self.damp >= 0:
            raise SlimkitError(f"--recover-damp must be >= 0, got {self.damp}")
        if self.bridge not in OBJECTIVES:
            raise SlimkitError(f"--bridge must be one of {', '.join(OBJECTIVES)}, got {self.bridge!r}")
        if self.target not in TARGETS:
            raise SlimkitError(f"--recover-target must be one of {', '.join(TARGETS)}, got {self.target!r}")


class _Stop(Exception):
    """Raised after the last Linear a fitting pass needs: the rest of the block is not computed."""


def ridge_solve(gram: torch.Tensor, cross: torch.Tensor, w0: torch.Tensor, damp: float) -> torch.Tensor:
    """argmin_W |W X^T - Y^T|^2 + lam |W - W0|^2 from gram = X^T X (in, in), cross = X^T Y (in, out),
    w0 (out, in); lam = damp * mean diag(gram). float64 in, float64 out."""
    lam = damp * float(gram.diagonal().mean().clamp_min(1e-30))
    m = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype)
    rhs = cross + lam * w0.T
    try:
        chol = torch.linalg.cholesky(m)
        return torch.cholesky_solve(rhs, chol).T
    except torch.linalg.LinAlgError:   # singular without damping: the minimum-norm solution
        return (torch.linalg.pinv(m) @ rhs).T


def sq_error(w: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, sq_y: float) -> float:
    """sum_t |W x_t - y_t|^2 from the normal-equation statistics (W: (out, in))."""
    return float((w @ gram * w).sum() - 2 * (w * cross.T).sum() + sq_y)


def _augmented(stats, name: str, has_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(X^T X, X^T Y) with a column of ones appended to X when the Linear has a bias (rows weighted
    like X's: its entries are sum w x, sum w and sum w y)."""
    g, c = stats.gram[name], stats.cross[name]
    if not has_bias:
        return g, c
    n = float(stats.weight_sum[name])
    s = stats.sum_x[name]
    g = torch.cat([torch.cat([g, s[:, None]], 1), torch.cat([s, torch.tensor([n], dtype=g.dtype)])[None]], 0)
    return g, torch.cat([c, stats.sum_y[name][None]], 0)


def refit_linear(lin: nn.Linear, stats, name: str, damp: float) -> dict[str, Any]:
    """Re-fit `lin` from the statistics of its input and target; applied only when it lowers the error."""
    has_bias = lin.bias is not None
    gram, cross = _augmented(stats, name, has_bias)
    w0 = lin.weight.detach().double()
    if has_bias:
        w0 = torch.cat([w0, lin.bias.detach().double()[:, None]], 1)
    sq_y = stats.sq_y[name]
    before = sq_error(w0, gram, cross, sq_y)
    w = ridge_solve(gram, cross, w0, damp)
    after = sq_error(w, gram, cross, sq_y)
    applied = bool(torch.isfinite(w).all()) and after < before
    if applied:
        dtype = lin.weight.dtype
        lin.weight.data.copy_(w[:, :lin.in_features].to(dtype))
        if has_bias:
            lin.bias.data.copy_(w[:, -1].to(dtype))
    denom = max(sq_y, 1e-30)
    return {"name": name, "rel_err_before": before / denom, "rel_err_after": (after if applied else before) / denom,
            "applied": applied}


def _units(idx: list[int], size: int) -> list[int]:
    """Rows of `size`-wide units (heads) for unit indices `idx`."""
    return [u * size + k for u in idx for k in range(size)]


def kept_rows(kept: dict[str, Any], layer: int, head_dim: int) -> dict[str, torch.Tensor | None]:
    """Per Linear of dense block `layer`, the dense output rows the pruned Linear keeps (None: all)."""
    def pick(key: str, unit: int = 1) -> torch.Tensor | None:
        v = kept[key] if key == "hidden" else (kept[key] if kept[key] == "all" else kept[key][str(layer)])
        return None if v == "all" else torch.tensor(_units(v, unit) if unit > 1 else v, dtype=torch.long)

    hidden, ffn = pick("hidden"), pick("ffn")
    return {"self_attn.q_proj": pick("heads", head_dim), "self_attn.k_proj": pick("kv_heads", head_dim),
            "self_attn.v_proj": pick("kv_heads", head_dim), "self_attn.o_proj": hidden,
            "mlp.gate_proj": ffn, "mlp.up_proj": ffn, "mlp.down_proj": hidden}


def width_groups(kept: dict[str, Any]) -> list[tuple[str, ...]]:
    """The Linears re-fitted in every kept block, in the order the block computes them."""
    hidden = kept["hidden"] != "all"
    heads = kept["heads"] != "all" or kept["kv_heads"] != "all"
    if not (hidden or kept["ffn"] != "all" or heads):
        return []
    groups = [QKV] if hidden else []
    if hidden or heads:
        groups.append(("self_attn.o_proj",))
    if hidden:
        groups.append(GATE_UP)
    groups.append(("mlp.down_proj",))
    return groups


def _stop(module: nn.Module, args: tuple, out: Any) -> None:
    raise _Stop


def _select(y: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return y if rows is None else y.index_select(-1, rows)


def dense_pass(block: nn.Module, xs: list[torch.Tensor], calls: list[tuple], rows: dict[str, torch.Tensor | None],
               names: list[str]) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
    """The dense block's outputs, and the outputs of its Linears `names` (kept rows only) per window."""
    stored: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [block.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: stored[n].append(_select(o, rows[n]).detach())) for n in names]
    try:
        outs = run_block(block, xs, calls)
        # each token weighs by 1 / its residual stream's mean square: an error counts relative to the
        # stream it is added to (what the next RMSNorm sees), so tokens with massive activations do not
        # dominate the fits, nor are they left out
        stored["_weights"] = [1.0 / o.float().pow(2).mean(-1).clamp_min(1e-12) for o in outs]
        return outs, stored
    finally:
        for h in handles:
            h.remove()


def _local_target(pruned_block: nn.Module, dense_block: nn.Module, name: str, rows: torch.Tensor | None,
                  slot: dict[str, torch.Tensor]):
    """A hook on the pruned block's module that computes Linear `name`'s local target: the dense
    module run on the same input (and rotary embeddings, mask), its kept rows stored in `slot`."""
    parent = LOCAL_PARENTS[name]
    dense_parent = dense_block.get_submodule(parent)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        out = dense_parent(*args, **kwargs)
        slot[name] = _select(out[0] if isinstance(out, tuple) else out, rows).detach()
    return pruned_block.get_submodule(parent).register_forward_pre_hook(hook, with_kwargs=True)


def refit_block(pruned_block: nn.Module, xp: list[torch.Tensor], calls: list[tuple],
                targets: dict[str, list[torch.Tensor]], groups: list[tuple[str, ...]], damp: float,
                local: tuple[nn.Module, dict[str, torch.Tensor | None]] | None = None) -> list[dict[str, Any]]:
    """Re-fit the Linears of `pruned_block` (fed `xp`) group by group to `targets` (per Linear, the
    dense outputs per window), each group on the inputs the groups before it now produce. `local`
    (the dense block, its kept rows per Linear) replaces the targets of o_proj and down_proj by
    local ones (see the module docstring)."""
    fits = []
    for group in groups:
        window = [0]
        slot: dict[str, torch.Tensor] = {}
        hooks = [_local_target(pruned_block, local[0], n, local[1][n], slot)
                 for n in group if local is not None and n in LOCAL_PARENTS]

        def target(n: str) -> torch.Tensor:
            return slot[n] if n in slot else targets[n][window[0]]

        stop = pruned_block.get_submodule(group[-1]).register_forward_hook(_stop)
        collector = Collector({n: pruned_block.get_submodule(n) for n in group}, gram=False,
                              targets={n: (lambda n=n: target(n)) for n in group},
                              weights=lambda: targets["_weights"][window[0]])
        try:
            for k, (x, (args, kwargs)) in enumerate(zip(xp, calls)):
                window[0] = k
                try:
                    pruned_block(x, *args, **kwargs)
                except _Stop:
                    pass
                collector.end_window()
        finally:
            collector.close()
            stop.remove()
            for h in hooks:
                h.remove()
        for n in group:
            fits.append(refit_linear(pruned_block.get_submodule(n), collector.stats, n, damp))
    return fits


@torch.no_grad()
def recover(dense: nn.Module, pruned: nn.Module, kept: dict[str, Any], windows: torch.Tensor,
            cfg: RecoverConfig = RecoverConfig(), progress: bool = True) -> dict[str, Any]:
    """Repair `pruned` (pruned from `dense` keeping `kept`, as compress.prune.surgery.apply_shape
    returns it) in place from calibration `windows` (N, T); returns what was fitted and its errors."""
    start = time.perf_counter()
    was = dense.training, pruned.training
    dense.eval()
    pruned.eval()
    d_layers, p_layers = decoder_layers(dense), decoder_layers(pruned)
    keep = list(kept["layers"])
    if len(keep) != len(p_layers):
        raise SlimkitError(f"recovery: the pruned model has {len(p_layers)} blocks, the plan kept {len(keep)}")
    head_dim = getattr(dense.config, "head_dim", None) or dense.config.hidden_size // dense.config.num_attention_heads
    hidden = None if kept["hidden"] == "all" else torch.tensor(kept["hidden"], dtype=torch.long)
    groups = width_groups(kept)
    xd, calls = capture(dense, windows)
    xp, _ = capture(pruned, windows, first_only=True)
    report: dict[str, Any] = {"damp": cfg.damp, "bridge": cfg.bridge, "tokens": int(windows.numel()),
                              "fits": [], "bridges": []}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(d_layers), desc="recovery", unit="block", leave=False)

    def dense_through(xs: list[torch.Tensor], lo: int, hi: int) -> list[torch.Tensor]:
        for k in range(lo, hi):
            xs = run_block(d_layers[k], xs, calls[k])
            if bar is not None:
                bar.update(1)
        return xs

    if keep[0] > 0:   # a cut that starts at block 0: the bridge goes into the token embedding
        xd = dense_through(xd, 0, keep[0])
        b = bridges.embedding_bridge(pruned, xp, [_select(x, hidden) for x in xd], cfg)
        report["bridges"].append({"removed": [0, keep[0] - 1], **b})
        xp, _ = capture(pruned, windows, first_only=True)
    for j, i in enumerate(keep):
        d_blk, p_blk = d_layers[i], p_layers[j]
        rows = kept_rows(kept, i, head_dim)
        xd, targets = dense_pass(d_blk, xd, calls[i], rows, [n for g in groups for n in g])
        if bar is not None:
            bar.update(1)
        local = (d_blk, rows) if cfg.target == "local" and hidden is None else None
        for f in refit_block(p_blk, xp, calls[i], targets, groups, cfg.damp, local=local):
            report["fits"].append({"layer": i, **f})
        del targets
        nxt = keep[j + 1] if j + 1 < len(keep) else len(d_layers)
        xd = dense_through(xd, i + 1, nxt)
        if nxt > i + 1:   # blocks i+1 .. nxt-1 were removed: bridge them in block i
            if cfg.target == "local" and hidden is None:   # the removed dense blocks, fed the pruned stream
                target = run_block(p_blk, xp, calls[i])
                for k in range(i + 1, nxt):
                    target = run_block(d_layers[k], target, calls[k])
            else:
                target = [_select(x, hidden) for x in xd]
            b = bridges.fit_bridge(p_blk, xp, calls[i], target, cfg)
            report["bridges"].append({"removed": [i + 1, nxt - 1], "block": i, **b})
        xp = run_block(p_blk, xp, calls[i])
    if bar is not None:
        bar.close()
    dense.train(was[0])
    pruned.train(was[1])
    fits = report["fits"]
    if fits:
        report["rel_err_before"] = sum(f["rel_err_before"] for f in fits) / len(fits)
        report["rel_err_after"] = sum(f["rel_err_after"] for f in fits) / len(fits)
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
