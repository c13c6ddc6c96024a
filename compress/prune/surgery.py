"""Remove structure from a model in place: blocks, query heads / KV groups, FFN channels, hidden channels.

FFN and hidden channels go through torch-pruning's dependency graph, which finds every coupled
tensor (the hidden width touches the embedding, every norm, every projection and the output head).
Heads and blocks are sliced here: torch-pruning's group query does not terminate on Hugging Face
attention (see importance.py), and a block is a list entry, not a channel.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from compress.prune.importance import Scores
from compress.prune.shape import Shape, shape_of


def top_units(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in ascending index order (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def _slice_linear(lin: torch.nn.Linear, rows: list[int] | None = None, cols: list[int] | None = None) -> None:
    w = lin.weight.data
    if rows is not None:
        w = w[rows]
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(lin.bias.data[rows].clone())
        lin.out_features = len(rows)
    if cols is not None:
        w = w[:, cols]
        lin.in_features = len(cols)
    lin.weight = torch.nn.Parameter(w.clone())


def _prune_heads(blk: torch.nn.Module, heads: list[int], kv: list[int], head_dim: int) -> None:
    """Keep query heads `heads` and KV heads `kv` (both ascending; heads grouped by their KV head)."""
    a = blk.self_attn

    def rows(units: list[int]) -> list[int]:
        return [u * head_dim + j for u in units for j in range(head_dim)]

    _slice_linear(a.q_proj, rows=rows(heads))
    _slice_linear(a.k_proj, rows=rows(kv))
    _slice_linear(a.v_proj, rows=rows(kv))
    _slice_linear(a.o_proj, cols=rows(heads))
    a.num_key_value_groups = len(heads) // len(kv)


def _choose_heads(s: Scores, layer: int, dense: Shape, target: Shape) -> tuple[list[int], list[int]]:
    q_per_group = dense.heads // dense.kv_heads
    keep_q = target.heads // target.kv_heads
    kv = top_units(s.kv[layer], target.kv_heads)
    heads: list[int] = []
    for g in kv:
        members = s.heads[layer][g * q_per_group:(g + 1) * q_per_group]
        heads += [g * q_per_group + j for j in top_units(members, keep_q)]
    return heads, kv


def _dependency_graph(model: torch.nn.Module):
    import torch_pruning as tp

    example = torch.zeros(1, 4, dtype=torch.long)
    with warnings.catch_warnings():
        # RMSNorm weights are plain parameters to torch-pruning ("unwrapped"); it prunes their only
        # dimension, which is what we want.
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                     forward_fn=lambda m, x: m(input_ids=x).logits)


def apply_shape(model: torch.nn.Module, target: Shape, s: Scores, layers: list[int] | None = None) -> dict[str, Any]:
    """Prune `model` in place to `target` using scores `s` (the blocks kept: `layers` when given,
    else the top `target.layers` block scores); return the kept indices (in source numbering)."""
    import torch_pruning as tp

    cfg = model.config
    dense = shape_of(cfg)
    target.fits_in(dense)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if layers is not None and (len(layers) != target.layers or sorted(set(layers)) != list(layers)
                               or not all(0 <= i < dense.layers for i in layers)):
        raise ValueError(f"kept blocks {layers} do not fit a {target.layers}-block shape of a {dense.layers}-block model")
    kept: dict[str, Any] = {"layers": list(layers) if layers is not None else top_units(s.layers, target.layers)}
    kept_heads, kept_kv, kept_ffn = {}, {}, {}
    for i in kept["layers"]:
        kept_ffn[i] = top_units(s.ffn[i], target.ffn)
        if (target.heads, target.kv_heads) != (dense.heads, dense.kv_heads):
            kept_heads[i], kept_kv[i] = _choose_heads(s, i, dense, target)
            _prune_heads(model.model.layers[i], kept_heads[i], kept_kv[i], head_dim)
    hidden = top_units(s.hidden, target.hidden)

    if target.layers != dense.layers:
        _keep_layers(model, kept["layers"])
    need_graph = target.ffn != dense.ffn or target.hidden != dense.hidden
    if need_graph:
        tied = _is_tied(model)
        dg = _dependency_graph(model)
        for new_i, i in enumerate(kept["layers"]):
            drop = sorted(set(range(dense.ffn)) - set(kept_ffn[i]))
            if drop:
                dg.get_pruning_group(model.model.layers[new_i].mlp.gate_proj, tp.prune_linear_out_channels, idxs=drop).prune()
        drop = sorted(set(range(dense.hidden)) - set(hidden))
        if drop:
            dg.get_pruning_group(model.model.embed_tokens, tp.prune_embedding_out_channels, idxs=drop).prune()
        if tied:  # torch-pruning replaces both parameters; tie them again as the config says
            model.lm_head.weight = model.model.embed_tokens.weight
    _update_config(model, target, head_dim)
    kept["hidden"] = hidden
    kept["ffn"] = {str(i): v for i, v in kept_ffn.items()} if target.ffn != dense.ffn else "all"
    kept["heads"] = {str(i): v for i, v in kept_heads.items()} if kept_heads else "all"
    kept["kv_heads"] = {str(i): v for i, v in kept_kv.items()} if kept_kv else "all"
    if target.hidden == dense.hidden:
        kept["hidden"] = "all"
    return kept


def _is_tied(model: torch.nn.Module) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def _keep_layers(model: torch.nn.Module, keep: list[int]) -> None:
    cfg = model.config
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in keep])
    for new_i, blk in enumerate(model.model.layers):   # KV-cache slots are indexed by layer_idx
        for mod in (blk, blk.self_attn):
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)


def _update_config(model: torch.nn.Module, t: Shape, head_dim: int) -> None:
    cfg = model.config
    cfg.hidden_size, cfg.intermediate_size = t.hidden, t.ffn
    cfg.num_attention_heads, cfg.num_key_value_heads = t.heads, t.kv_heads
    cfg.head_dim = head_dim          # stays; no longer hidden_size // heads in general
    emb = model.get_input_embeddings()
    if hasattr(emb, "embed_scale"):  # Gemma scales embeddings by sqrt(hidden_size), as a reload will
        emb.embed_scale.fill_(t.hidden ** 0.5)
    for mod in model.modules():      # modules that cached the widths at construction
        if mod is model:
            continue
        if isinstance(getattr(mod, "hidden_size", None), int):
            mod.hidden_size = t.hidden
        if isinstance(getattr(mod, "intermediate_size", None), int):
            mod.intermediate_size = t.ffn
