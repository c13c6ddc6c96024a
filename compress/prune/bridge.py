"""Linear bridges over removed blocks (ReplaceMe, Shopkhoev et al. 2025), folded into kept weights.

When blocks i+1..k are removed, block i's output is Y + M: Y the residual stream after its
attention, M its MLP's contribution. A d x d map T is fitted on calibration activations so that
Y + M T approximates L, the hidden state the dense model has after block k:
  ls      min_T sum_t |M_t T - (L_t - Y_t)|^2 + lam |T - I|^2, lam = damp * mean diag(M^T M)
          (closed form in float64; damping pulls toward T = I, i.e. plain removal)
  cosine  min_T mean_t 1 - cos(Y_t + M_t T, L_t), Adam from the ls solution (ReplaceMe's cosine
          objective)
T is folded into block i's down_proj (W <- T^T W, b <- T^T b): no tensor is added, so every exporter
works unchanged. Gemma 3 normalises the MLP output (post_feedforward_layernorm, x / rms(x) * g)
before adding it, so T cannot be folded exactly there: down_proj takes diag(g) T diag(g)^-1, which
makes the norm produce exactly the direction of M T, and the norm's weight g is re-fitted per
channel by least squares to L - Y (a norm fixes the per-token magnitude; g is what can be fitted).

A cut that starts at block 0 has no block before it: T maps the token embedding's output to L and
is folded into the embedding matrix (E <- E T) when it is not tied to the output head. A tied
embedding also feeds the head, so there is nothing to fold into; such a cut is not bridged and the
span search (`choose_spans`) does not propose it.

A bridge is applied only when it lowers the calibration error of the block output against L.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.calib import decoder_layers

COSINE_STEPS = 150
COSINE_LR = 1e-3


def _ridge_map(x: torch.Tensor, r: torch.Tensor, damp: float) -> torch.Tensor:
    """T (d_in, d_out) minimising |x T - r|^2 + lam |T - I|^2 (x, r: (N, d) float32)."""
    from compress.prune.recover import ridge_solve

    gram = (x.T @ x).double()
    cross = (x.T @ r).double()
    return ridge_solve(gram, cross, torch.eye(x.shape[1], r.shape[1], dtype=torch.float64), damp).T


def _cos_dist(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1 - nn.functional.cosine_similarity(pred, target, dim=-1)).mean()


def _cosine_map(y: torch.Tensor, m: torch.Tensor, target: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
    t = t0.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([t], lr=COSINE_LR)
    with torch.enable_grad():
        for _ in range(COSINE_STEPS):
            opt.zero_grad()
            loss = _cos_dist(y + m @ t, target)
            loss.backward()
            opt.step()
    return t.detach().double()


def fit_map(y: torch.Tensor, m: torch.Tensor, target: torch.Tensor, objective: str, damp: float) -> torch.Tensor:
    """T for Y + M T ~ L (all (N, d) float32)."""
    y, m, target = y.detach(), m.detach(), target.detach()
    t = _ridge_map(m, target - y, damp)
    return _cosine_map(y, m, target, t) if objective == "cosine" else t


def _errors(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(squared error relative to |L|^2, mean cosine distance)."""
    return (float(((pred - target).double() ** 2).sum() / (target.double() ** 2).sum().clamp_min(1e-30)),
            float(_cos_dist(pred, target)))


def _better(objective: str, new: tuple[float, float], old: tuple[float, float]) -> bool:
    k = 1 if objective == "cosine" else 0
    return new[k] < old[k]


def _contribution(block: nn.Module) -> nn.Module:
    """The module whose output the block adds to the residual stream after its attention."""
    post_norm = getattr(block, "post_feedforward_layernorm", None)   # Gemma 3
    return post_norm if post_norm is not None else block.mlp


def _terms(block: nn.Module, xs: list[torch.Tensor], calls: list[tuple]) -> tuple[torch.Tensor, ...]:
    """(Y, M, Z) over all tokens, (N, d) float32: residual after attention, MLP contribution, and
    the MLP output before Gemma's post-norm (Z is M for Llama)."""
    ys, ms, zs = [], [], []
    grab: dict[str, torch.Tensor] = {}
    handles = [_contribution(block).register_forward_hook(lambda mod, a, o: grab.__setitem__("m", o)),
               block.mlp.register_forward_hook(lambda mod, a, o: grab.__setitem__("z", o))]
    try:
        for x, (args, kwargs) in zip(xs, calls):
            out = block(x, *args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            d = out.shape[-1]
            ms.append(grab["m"].reshape(-1, d).float())
            zs.append(grab["z"].reshape(-1, d).float())
            ys.append(out.reshape(-1, d).float() - ms[-1])
    finally:
        for h in handles:
            h.remove()
    return torch.cat(ys), torch.cat(ms), torch.cat(zs)


def _fold_llama(block: nn.Module, t: torch.Tensor) -> None:
    down = block.mlp.down_proj   # out = a W^T T = a (T^T W)^T
    down.weight.data.copy_((t.T @ down.weight.data.double()).to(down.weight.dtype))
    if down.bias is not None:
        down.bias.data.copy_((t.T @ down.bias.data.double()).to(down.bias.dtype))


def _fold_gemma(block: nn.Module, t: torch.Tensor, z: torch.Tensor, r: torch.Tensor, damp: float) -> None:
    norm = block.post_feedforward_layernorm
    g = 1.0 + norm.weight.data.double()                          # Gemma3RMSNorm scales by (1 + weight)
    conj = g[:, None] * t / g[None, :]                           # diag(g) T diag(g)^-1
    _fold_llama(block, conj)
    z2 = (z.double() @ conj)                                     # the MLP's new output, (N, d)
    n = z2 * torch.rsqrt(z2.pow(2).mean(-1, keepdim=True) + norm.eps)   # normalised, before the weight
    nn_sum, nr_sum = (n * n).sum(0), (n * r.double()).sum(0)
    lam = damp * float(nn_sum.mean().clamp_min(1e-30))
    g2 = (nr_sum + lam * g) / (nn_sum + lam)                     # per-channel ridge least squares
    norm.weight.data.copy_((g2 - 1.0).to(norm.weight.dtype))


def fit_bridge(block: nn.Module, xs: list[torch.Tensor], calls: list[tuple], targets: list[torch.Tensor],
               cfg: Any) -> dict[str, Any]:
    """Bridge the blocks removed after `block` (fed `xs`); `targets`: the dense hidden states after
    the last removed block, restricted to the kept hidden channels. Folds T into `block` in place."""
    target = torch.cat([t.reshape(-1, t.shape[-1]).float() for t in targets])
    y, m, z = _terms(block, xs, calls)
    before = _errors(y + m, target)
    t = fit_map(y, m, target, cfg.bridge, cfg.damp)
    saved = {k: v.detach().clone() for k, v in block.state_dict().items()}
    gemma = hasattr(block, "post_feedforward_layernorm")
    if gemma:
        _fold_gemma(block, t, z, target - y, cfg.damp)
    else:
        _fold_llama(block, t)
    y2, m2, _ = _terms(block, xs, calls)
    after = _errors(y2 + m2, target)
    applied = _better(cfg.bridge, after, before) and bool(torch.isfinite(t).all())
    if not applied:
        block.load_state_dict(saved)
    return {"objective": cfg.bridge, "applied": applied, "folded_into": "post_feedforward_layernorm+down_proj"
            if gemma else "down_proj", "rel_err_before": before[0], "rel_err_after": (after if applied else before)[0],
            "cos_before": before[1], "cos_after": (after if applied else before)[1]}


def embedding_bridge(model: nn.Module, xs: list[torch.Tensor], targets: list[torch.Tensor], cfg: Any
                     ) -> dict[str, Any]:
    """Bridge a cut that starts at block 0 in the token embedding (E <- E T), when it is not tied."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if head is not None and head.weight is emb.weight:
        return {"applied": False, "folded_into": None,
                "why": "the cut starts at block 0 and the embedding is tied to the output head: nothing to fold into"}
    x = torch.cat([v.reshape(-1, v.shape[-1]).float() for v in xs])
    target = torch.cat([v.reshape(-1, v.shape[-1]).float() for v in targets])
    before = _errors(x, target)
    t = fit_map(torch.zeros_like(x), x, target, cfg.bridge, cfg.damp)
    after = _errors((x.double() @ t).float(), target)
    applied = _better(cfg.bridge, after, before) and bool(torch.isfinite(t).all())
    if applied:
        emb.weight.data.copy_((emb.weight.data.double() @ t).to(emb.weight.dtype))
    return {"objective": cfg.bridge, "applied": applied, "folded_into": "embed_tokens",
            "rel_err_before": before[0], "rel_err_after": (after if applied else before)[0],
            "cos_before": before[1], "cos_after": (after if applied else before)[1]}


# ------------------------------------------------------------------------------ what to cut
@torch.no_grad()
def span_distances(model: nn.Module, windows: torch.Tensor, max_len: int) -> torch.Tensor:
    """D[s, n] = mean over tokens of 1 - cos(h_s, h_{s+n}): how far the output of blocks s..s+n-1 is
    from their input (h_s: the input of block s; h_L: the output of the last block). inf where n = 0
    or the span runs past the end."""
    layers = decoder_layers(model)
    n_layers = len(layers)
    total = torch.zeros(n_layers + 1, max_len + 1, dtype=torch.float64)
    tokens = 0
    hs: list[torch.Tensor] = []
    handles = [blk.register_forward_pre_hook(lambda mod, a, kw: hs.append(
        (a[0] if a else kw["hidden_states"]).float()), with_kwargs=True) for blk in layers]
    handles.append(layers[-1].register_forward_hook(lambda mod, a, o: hs.append(
        (o[0] if isinstance(o, tuple) else o).float())))
    was = model.training
    model.eval()
    try:
        for w in windows:
            hs.clear()
            model(input_ids=w[None], use_cache=False)
            for s in range(n_layers):
                for n in range(1, min(max_len, n_layers - s) + 1):
                    cos = nn.functional.cosine_similarity(hs[s], hs[s + n], dim=-1)
                    total[s, n] += float((1 - cos).sum())
            tokens += w.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    dist = total / max(tokens, 1)
    for s in range(n_layers + 1):
        for n in range(max_len + 1):
            if n == 0 or s + n > n_layers:
                dist[s, n] = float("inf")
    return dist


def choose_spans(dist: torch.Tensor, n_layers: int, remove: int, *, allow_first: bool
                 ) -> list[tuple[str, list[int], float]]:
    """Layer sets (kept dense indices) removing `remove` blocks as one contiguous span and as two
    (separated by at least one kept block), each the one of least summed span distance:
    [(name, kept, distance)], best first."""
    first = 0 if allow_first else 1
    out: list[tuple[str, list[int], float]] = []

    def kept(spans: list[tuple[int, int]]) -> list[int]:
        gone = {k for s, n in spans for k in range(s, s + n)}
        return [k for k in range(n_layers) if k not in gone]

    if remove <= 0 or remove >= n_layers:
        return out
    one = [(float(dist[s, remove]), s) for s in range(first, n_layers - remove + 1)]
    if one:
        d, s = min(one)
        if d < float("inf"):
            out.append(("1 span", kept([(s, remove)]), d))
    best2 = None
    for a in range(1, remove):
        b = remove - a
        for s1 in range(first, n_layers - a + 1):
            for s2 in range(s1 + a + 1, n_layers - b + 1):
                d = float(dist[s1, a] + dist[s2, b])
                if best2 is None or d < best2[0]:
                    best2 = (d, [(s1, a), (s2, b)])
    if best2 is not None and best2[0] < float("inf"):
        out.append(("2 spans", kept(best2[1]), best2[0]))
    return sorted(out, key=lambda o: o[2])
