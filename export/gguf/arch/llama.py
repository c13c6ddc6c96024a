"""Llama family (SmolLM2, Llama 2/3 without rope scaling, TinyLlama, ...)."""
from __future__ import annotations

import gguf
import torch

from compress.errors import SlimkitError
from compress.rope import llama3_factors
from export.gguf.arch.base import ArchSpec, register


def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half Q/K rows -> llama.cpp's interleaved RoPE pairs (LlamaModel.permute)."""
    # (n_head * head_dim, n_in) -> (n_head, 2, head_dim/2, n_in) -> swap -> back
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(rope: dict, head_dim: int) -> torch.Tensor:
    """The `rope_freqs` tensor of Llama 3.1's RoPE scaling, as llama.cpp's converter writes it."""
    return torch.from_numpy(llama3_factors(rope, head_dim)).to(torch.float32)


@register
class Llama(ArchSpec):
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    family = "llama"
    rope_types = ("default", "linear", "llama3")

    def extra_tensors(self):
        rope = self.rope_parameters()
        if rope.get("rope_type") == "llama3":
            yield "rope_freqs", gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", \
                llama3_rope_factors(rope, self.head_dim)

    def parameters(self, w: gguf.GGUFWriter) -> None:
        super().parameters(w)
        c = self.config
        rope = self.rope_parameters()
        w.add_rope_dimension_count(self.head_dim)
        w.add_rope_freq_base(rope.get("rope_theta", 10000.0))
        self.add_rope_scaling(w, rope)
        if self.head_dim != c.hidden_size // c.num_attention_heads:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)

    def transform(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        c = self.config
        if hf_name.endswith("self_attn.q_proj.weight"):
            return permute_rope(tensor, c.num_attention_heads)
        if hf_name.endswith("self_attn.k_proj.weight"):
            return permute_rope(tensor, c.num_key_value_heads)
        return tensor


@register
class Mistral(Llama):
    """Mistral: the llama graph in llama.cpp. A sliding window shorter than the context cannot be
    represented there (its llama graph attends to every position)."""
    family = "mistral"

    def parameters(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        window = getattr(c, "sliding_window", None)
        if window and window < c.max_position_embeddings:
            raise SlimkitError(f"sliding_window={window} < max_position_embeddings={c.max_position_embeddings}: "
                               "llama.cpp's llama graph has no sliding window, so this Mistral would differ past "
                               f"{window} tokens; set sliding_window to null (or >= the context) to export it")
        super().parameters(w)
