"""What feature and relation losses need from a model: hidden states at mapped layers (through
learned projections when widths differ) and the q/k/v projections of one attention layer.

Hidden states come from the model's own `output_hidden_states` (index 0 = embeddings, i = after
decoder layer i). q/k/v are read with forward hooks on the layer's q_proj/k_proj/v_proj (Llama and
Gemma-3 name them so); they are the vectors before RoPE, so the relation losses compare content
relations, not rotated ones. Keys and values of grouped-query attention are repeated to the
query heads so that q k^T has one row per query head.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from compress.errors import SlimkitError


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student hidden-state index i (1..Ls) -> teacher index round(i * Lt / Ls): the last layers
    align, the others are spread evenly."""
    return [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]


def parse_layer_map(text: str, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """'uniform' or 'S:T,S:T' (hidden-state indices, 0 = embeddings)."""
    if text in ("", "uniform"):
        return uniform_layer_map(student_layers, teacher_layers)
    pairs = []
    for item in text.split(","):
        try:
            s, t = (int(x) for x in item.split(":"))
        except ValueError:
            raise SlimkitError(f"bad layer map entry {item!r}; write STUDENT:TEACHER pairs like 2:4,4:8") from None
        if not (0 <= s <= student_layers and 0 <= t <= teacher_layers):
            raise SlimkitError(f"layer map entry {item!r} is out of range: the student has {student_layers} "
                               f"layers, the teacher {teacher_layers} (0 = embeddings)")
        pairs.append((s, t))
    return pairs


class Projections(nn.Module):
    """One learned linear map per mapped layer, student width -> teacher width; identity when
    the widths are equal (nothing to learn). Trained with the student, dropped after training."""

    def __init__(self, layer_map: Sequence[tuple[int, int]], student_width: int, teacher_width: int) -> None:
        super().__init__()
        self.layer_map = [tuple(p) for p in layer_map]
        self.maps = nn.ModuleList(
            nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width, bias=False)
            for _ in self.layer_map)
        for m in self.maps:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=student_width ** -0.5)

    def forward(self, student_hidden: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(student_hidden[s]) for proj, (s, _) in zip(self.maps, self.layer_map)]


def num_layers(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def attention_shape(model: Any) -> tuple[int, int]:
    """(query heads, key/value heads)."""
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    return heads, int(getattr(cfg, "num_key_value_heads", None) or heads)


def _decoder_layers(model: Any) -> Any:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise SlimkitError(f"{type(model).__name__} has no model.layers; relation losses support Llama-style and "
                           "Gemma-3 models")
    return layers


@contextlib.contextmanager
def capture_qkv(model: Any, layer: int) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the dict receives 'q', 'k', 'v' ((B, L, heads * head_dim) each, k and v
    repeated to the query heads) of decoder layer `layer` (0-based, negative from the end)."""
    attn = _decoder_layers(model)[layer].self_attn
    heads, kv_heads = attention_shape(model)
    found: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if name != "q" and kv_heads != heads:
                b, n, d = out.shape  # (B, L, kv_heads * head_dim) -> (B, L, heads * head_dim)
                out = out.view(b, n, kv_heads, d // kv_heads).repeat_interleave(heads // kv_heads, dim=2)
                out = out.reshape(b, n, -1)
            found[name] = out
        return fn

    handles = [getattr(attn, f"{n}_proj").register_forward_hook(hook(n)) for n in ("q", "k", "v")]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def relation_heads(student: Any, teacher: Any) -> int:
    """Number of relation heads: the gcd of both query-head counts (divides both widths)."""
    import math

    return math.gcd(attention_shape(student)[0], attention_shape(teacher)[0])
