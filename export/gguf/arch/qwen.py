"""Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm, no biases) families.

Both use rotate-half ("NEOX") RoPE in llama.cpp as in transformers, so Q/K rows are stored as they
are (no permutation as for llama); tensor names come from the gguf package's TensorNameMap.

llama.cpp's qwen2 graph sizes attn_q and attn_output as hidden x hidden (it has no separate head
width), so a Qwen2 whose heads or hidden channels were pruned cannot be written as qwen2: it is
written in llama.cpp's llama graph instead, which takes q/k/v biases and a head width of its own
(Q/K rows and biases permuted to llama's interleaved RoPE, as for Llama).
"""
from __future__ import annotations

from typing import Any

import gguf
import torch

from export.gguf.arch.base import ArchSpec, register
from export.gguf.arch.llama import Llama, permute_rope


class _Qwen(ArchSpec):
    def parameters(self, w: gguf.GGUFWriter) -> None:
        super().parameters(w)
        c = self.config
        rope = self.rope_parameters()
        w.add_rope_freq_base(rope.get("rope_theta", 1_000_000.0))
        self.add_rope_scaling(w, rope)
        if self.head_dim != c.hidden_size // c.num_attention_heads:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)


@register
class Qwen2(_Qwen):
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    family = "qwen2"

    @classmethod
    def for_config(cls, config: Any) -> ArchSpec:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if config.num_attention_heads * head_dim != config.hidden_size:
            return Qwen2AsLlama(config)
        return cls(config)


class Qwen2AsLlama(Llama):
    """A pruned Qwen2 in llama.cpp's llama graph (see the module docstring); not registered."""
    family = "qwen2"

    def transform(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        c = self.config
        if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            return permute_rope(tensor, c.num_attention_heads)
        if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            return permute_rope(tensor, c.num_key_value_heads)
        return tensor


@register
class Qwen3(_Qwen):
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    family = "qwen3"
