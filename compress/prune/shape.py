"""Model shapes for pruning: what a decoder looks like, what it costs in parameters, what is valid.

A `Shape` is the five numbers a Llama-style or Gemma-3 decoder is made of. Parameter counts are
computed from the shape alone (no model is built), so a search can try thousands of shapes; a
test checks the formula against the real models after pruning.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from compress import families
from compress.errors import SlimkitError



@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise SlimkitError(f"pruned shape has {f.name}={getattr(self, f.name)}: every dimension must be >= 1")
        if self.heads % self.kv_heads:
            raise SlimkitError(f"{self.heads} query heads do not divide into {self.kv_heads} KV groups: "
                               "choose --heads as a multiple of --kv-heads")

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def fits_in(self, dense: Shape) -> None:
        """Raise unless this shape is reachable from `dense` by removing structure only."""
        for f in dataclasses.fields(self):
            if getattr(self, f.name) > getattr(dense, f.name):
                raise SlimkitError(f"--{f.name.replace('_', '-')} {getattr(self, f.name)} is larger than the model's "
                                   f"{getattr(dense, f.name)}: pruning can only remove structure")
        q_per_group = dense.heads // dense.kv_heads
        if self.heads // self.kv_heads > q_per_group:
            raise SlimkitError(f"{self.heads} heads over {self.kv_heads} KV groups needs {self.heads // self.kv_heads} "
                               f"query heads per group, but the model has {q_per_group}: keep more KV groups")


@dataclass(frozen=True)
class ArchInfo:
    """What the parameter count depends on besides the shape."""
    model_type: str
    vocab: int
    head_dim: int
    tied: bool
    norms_per_layer: int      # RMSNorm weight vectors of width `hidden` per block
    qk_norm: bool             # Gemma 3 normalises q and k per head (two vectors of head_dim)
    attention_bias: bool
    o_bias: bool
    mlp_bias: bool

    @classmethod
    def of(cls, config: Any) -> ArchInfo:
        mt = getattr(config, "model_type", None)
        fam = families.by_model_type(mt)   # an unsupported architecture names the supported families
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        attention_bias = fam.qkv_bias if fam.qkv_bias is not None else bool(getattr(config, "attention_bias", False))
        return cls(model_type=mt, vocab=config.vocab_size, head_dim=head_dim,
                   tied=bool(getattr(config, "tie_word_embeddings", False)),
                   norms_per_layer=fam.norms_per_layer, qk_norm=fam.qk_norm,
                   attention_bias=attention_bias, o_bias=attention_bias and fam.o_bias_with_attention_bias,
                   mlp_bias=bool(getattr(config, "mlp_bias", False)))


def shape_of(config: Any) -> Shape:
    return Shape(layers=config.num_hidden_layers, hidden=config.hidden_size, ffn=config.intermediate_size,
                 heads=config.num_attention_heads, kv_heads=config.num_key_value_heads)


def block_params(s: Shape, a: ArchInfo) -> int:
    """Parameters of one decoder block."""
    q, kv = s.heads * a.head_dim, s.kv_heads * a.head_dim
    attn = s.hidden * (q + 2 * kv) + q * s.hidden
    if a.attention_bias:
        attn += q + 2 * kv + (s.hidden if a.o_bias else 0)
    mlp = 3 * s.hidden * s.ffn + ((2 * s.ffn + s.hidden) if a.mlp_bias else 0)
    norms = a.norms_per_layer * s.hidden + (2 * a.head_dim if a.qk_norm else 0)
    return attn + mlp + norms


def embedding_params(s: Shape, a: ArchInfo) -> int:
    """Token embedding plus the output head when it is not tied to it."""
    return a.vocab * s.hidden * (1 if a.tied else 2)


def count_params(s: Shape, a: ArchInfo, *, embeddings: bool = False) -> int:
    """Non-embedding parameters (blocks + final norm); with `embeddings`, the whole model."""
    body = s.layers * block_params(s, a) + s.hidden
    return body + (embedding_params(s, a) if embeddings else 0)


def head_options(dense: Shape) -> list[tuple[int, int]]:
    """Every valid (heads, kv_heads) reachable from `dense`: whole KV groups dropped and/or the
    same number of query heads dropped inside every group (GQA stays a valid grouping)."""
    q_per_group = dense.heads // dense.kv_heads
    return sorted({(kv * q, kv) for kv in range(1, dense.kv_heads + 1) for q in range(1, q_per_group + 1)})


def align_down(n: int, align: int, limit: int) -> int:
    """n rounded down to a multiple of `align` (at least `align`, at most `limit`); with align 1 or a
    model dimension that is not itself a multiple, dims are kept as they are."""
    if align <= 1:
        return max(1, min(n, limit))
    return max(align, min(n - n % align, limit - limit % align))
