"""Importance of every prunable unit: decoder blocks, FFN channels, query heads, KV groups, hidden channels.

Methods (higher score = more important = kept):
- `minitron`: calibration activations (Minitron, Muralidharan et al. 2024): per unit the mean |activation|
  over a sequence's tokens, aggregated over the batch with an L2 norm. FFN channel: the input of
  down_proj; head: the L2 norm of the head's slice of o_proj's input; hidden channel: the outputs of
  every RMSNorm, summed.
- `taylor`: first-order Taylor (LLM-Pruner): sum over the unit's weights of |w * dL/dw|, the gradient
  of the next-token loss accumulated over the calibration windows.
- `magnitude`: sum of |w| over the unit's weights. `random`: seeded uniform scores.
Blocks are ranked by block influence (ShortGPT: 1 - cos(block input, block output), mean over
tokens) or by the loss increase when the block alone is skipped (`depth_metric="ppl"`).

torch-pruning's importance classes score groups from its dependency graph; its graph does not
resolve the query-head groups of Hugging Face attention (the group query runs away through the
attention matmuls), so one aggregation over parameter slices serves every unit here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

METHODS = ("minitron", "taylor", "magnitude", "random", "block-influence")
CALIBRATED = ("minitron", "taylor", "block-influence")


@dataclass
class Scores:
    layers: torch.Tensor                                   # [L]
    hidden: torch.Tensor                                   # [D]
    ffn: list[torch.Tensor] = field(default_factory=list)  # L x [F]
    heads: list[torch.Tensor] = field(default_factory=list)  # L x [H]
    kv: list[torch.Tensor] = field(default_factory=list)   # L x [KV]


def _blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.model.layers


def _norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """RMSNorms over the hidden width (not Gemma's per-head q_norm/k_norm)."""
    d = model.config.hidden_size
    return [m for n, m in model.named_modules()
            if n.endswith("norm") and "self_attn" not in n and getattr(m, "weight", None) is not None
            and m.weight.shape == (d,)]


def _batches(windows: torch.Tensor, batch: int):
    for i in range(0, len(windows), batch):
        yield windows[i:i + batch]


def _forward_with_hooks(model: torch.nn.Module, hooks: list, windows: torch.Tensor, batch: int, desc: str,
                        progress: bool) -> None:
    """One no-grad pass over the calibration windows; the hooks collect what they need, then go."""
    try:
        with torch.no_grad():
            for ids in tqdm(list(_batches(windows, batch)), desc=desc, disable=not progress):
                model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()


def _lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


# ---------------------------------------------------------------------------------------- width
def activation_scores(model: torch.nn.Module, windows: torch.Tensor, batch: int = 4, progress: bool = True,
                      influence: bool = False) -> Scores:
    """Minitron importance from one calibration pass (no gradients); with `influence`, block
    influence from the same pass."""
    cfg = model.config
    n_layers = len(_blocks(model))
    sq: dict[str, torch.Tensor] = {}   # running sums over the batch of (per-sample mean |act|)^2
    bi_total = torch.zeros(n_layers, dtype=torch.float64)

    def add(key: str, per_sample: torch.Tensor) -> None:   # per_sample: [B, units]
        v = per_sample.float().pow(2).sum(0)
        sq[key] = sq[key] + v if key in sq else v

    hooks = []
    for i, blk in enumerate(_blocks(model)):
        hd = getattr(blk.self_attn, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        hooks.append(blk.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: add(f"ffn{i}", a[0].abs().mean(1))))                     # [B,T,F] -> [B,F]
        hooks.append(blk.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, i=i, hd=hd: add(f"head{i}", a[0].unflatten(-1, (-1, hd)).norm(dim=-1).mean(1))))  # [B,T,H,hd] -> [B,H]
    for norm in _norms(model):
        hooks.append(norm.register_forward_hook(lambda m, a, out: add("hidden", out.abs().mean(1))))  # [B,T,D] -> [B,D]
    if influence:
        hooks += _influence_hooks(model, bi_total)
    _forward_with_hooks(model, hooks, windows, batch, "calibration (activations)", progress)
    heads = [sq[f"head{i}"].sqrt() for i in range(n_layers)]
    layers = (bi_total / windows.numel()).float() if influence else torch.zeros(n_layers)
    return Scores(layers=layers, hidden=sq["hidden"].sqrt(),
                  ffn=[sq[f"ffn{i}"].sqrt() for i in range(n_layers)], heads=heads,
                  kv=[_kv_from_heads(h, cfg) for h in heads])


def _kv_from_heads(heads: torch.Tensor, cfg) -> torch.Tensor:
    return heads.view(cfg.num_key_value_heads, -1).sum(1)   # q heads are grouped contiguously per KV head


def weight_scores(model: torch.nn.Module, per_weight: Callable[[str, torch.Tensor], torch.Tensor]) -> Scores:
    """Aggregate a per-weight score (same shape as each weight) over every unit's slice of weights."""
    cfg = model.config
    hidden = torch.zeros(cfg.hidden_size)
    ffn, heads, kv = [], [], []
    params = dict(model.named_parameters())
    for name, p in params.items():
        s = per_weight(name, p.detach()).float()
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            hidden += s.sum(0)
        elif s.dim() == 1 and s.shape[0] == cfg.hidden_size:
            hidden += s
    for i, blk in enumerate(_blocks(model)):
        a, m = blk.self_attn, blk.mlp
        hd = a.head_dim
        sc = {n: per_weight(f"model.layers.{i}.{path}.weight", lin.weight.detach()).float() for n, path, lin in
              (("q", "self_attn.q_proj", a.q_proj), ("k", "self_attn.k_proj", a.k_proj),
               ("v", "self_attn.v_proj", a.v_proj), ("o", "self_attn.o_proj", a.o_proj),
               ("gate", "mlp.gate_proj", m.gate_proj), ("up", "mlp.up_proj", m.up_proj),
               ("down", "mlp.down_proj", m.down_proj))}
        for n in ("q", "k", "v", "gate", "up"):
            hidden += sc[n].sum(0)                        # columns read the hidden width
        for n in ("o", "down"):
            hidden += sc[n].sum(1)                        # rows write it
        ffn.append(sc["gate"].sum(1) + sc["up"].sum(1) + sc["down"].sum(0))
        h = sc["q"].sum(1).view(-1, hd).sum(1) + sc["o"].sum(0).view(-1, hd).sum(1)   # [H]
        heads.append(h)
        kv.append(_kv_from_heads(h, cfg) + (sc["k"].sum(1) + sc["v"].sum(1)).view(-1, hd).sum(1))
    n_layers = len(ffn)
    layers = torch.tensor([float(sum(per_weight(f"model.layers.{i}.{n}", p.detach()).float().sum()
                                     for n, p in blk.named_parameters()) / sum(p.numel() for p in blk.parameters()))
                           for i, blk in enumerate(_blocks(model))])
    return Scores(layers=layers if n_layers else torch.zeros(0), hidden=hidden, ffn=ffn, heads=heads, kv=kv)


def magnitude_scores(model: torch.nn.Module) -> Scores:
    return weight_scores(model, lambda n, w: w.abs())


def random_scores(model: torch.nn.Module, seed: int) -> Scores:
    g = torch.Generator().manual_seed(seed)
    return weight_scores(model, lambda n, w: torch.rand(w.shape, generator=g))


def taylor_scores(model: torch.nn.Module, windows: torch.Tensor, batch: int = 2, progress: bool = True) -> Scores:
    """|w * grad| with the next-token-loss gradient summed over the calibration windows."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for ids in tqdm(list(_batches(windows, batch)), desc="calibration (gradients)", disable=not progress):
                (_lm_loss(model, ids) * len(ids) / len(windows)).backward()
        grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                 for n, p in model.named_parameters()}
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return weight_scores(model, lambda n, w: (w * grads[n]).abs())


# ---------------------------------------------------------------------------------------- depth
def _block_io(args, kwargs, out) -> tuple[torch.Tensor, torch.Tensor]:
    x = args[0] if args else kwargs["hidden_states"]
    y = out[0] if isinstance(out, tuple) else out
    return x, y


def _influence_hooks(model: torch.nn.Module, total: torch.Tensor) -> list:
    """Hooks adding each block's sum over tokens of 1 - cos(input, output) into total[i]."""
    def hook(i):
        def fn(m, args, kwargs, out):
            x, y = _block_io(args, kwargs, out)
            total[i] += (1 - torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)).sum().double()
        return fn

    return [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(_blocks(model))]


def block_influence(model: torch.nn.Module, windows: torch.Tensor, batch: int = 4, progress: bool = True) -> torch.Tensor:
    """ShortGPT block influence per block: 1 - mean over tokens of cos(input, output)."""
    total = torch.zeros(len(_blocks(model)), dtype=torch.float64)
    _forward_with_hooks(model, _influence_hooks(model, total), windows, batch, "calibration (block influence)", progress)
    return (total / windows.numel()).float()


def drop_one_loss(model: torch.nn.Module, windows: torch.Tensor, batch: int = 4, progress: bool = True) -> torch.Tensor:
    """Loss increase when each block alone is skipped (its output replaced by its input)."""
    blocks = _blocks(model)

    def loss() -> float:
        with torch.no_grad():
            return sum(float(_lm_loss(model, ids)) * len(ids) for ids in _batches(windows, batch)) / len(windows)

    base = loss()
    out = torch.zeros(len(blocks))
    for i in tqdm(range(len(blocks)), desc="calibration (drop one block)", disable=not progress):
        def skip(m, args, kwargs, o):
            x, _ = _block_io(args, kwargs, o)
            return (x,) + tuple(o[1:]) if isinstance(o, tuple) else x
        h = blocks[i].register_forward_hook(skip, with_kwargs=True)
        try:
            out[i] = loss() - base
        finally:
            h.remove()
    return out


def score(model: torch.nn.Module, method: str, windows: torch.Tensor | None, *, depth_metric: str = "influence",
          seed: int = 0, progress: bool = True) -> Scores:
    """Scores for every unit under `method` (windows: [N, T] calibration token ids; needed when calibrated)."""
    n_layers = len(_blocks(model))
    influence = depth_metric == "influence"
    if method == "minitron":
        s = activation_scores(model, windows, progress=progress, influence=influence)
    elif method == "block-influence":   # depth only: no width scores needed
        cfg = model.config
        s = Scores(layers=torch.zeros(n_layers), hidden=torch.zeros(cfg.hidden_size),
                   ffn=[torch.zeros(cfg.intermediate_size)] * n_layers, heads=[torch.zeros(cfg.num_attention_heads)] * n_layers,
                   kv=[torch.zeros(cfg.num_key_value_heads)] * n_layers)
        influence = False
    elif method == "taylor":
        s = taylor_scores(model, windows, progress=progress)
    elif method == "magnitude":
        s = magnitude_scores(model)
    else:
        s = random_scores(model, seed)
    if method in CALIBRATED and not (method == "minitron" and influence):
        s.layers = (drop_one_loss if depth_metric == "ppl" else block_influence)(model, windows, progress=progress)
    return s
