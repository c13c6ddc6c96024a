"""Gemma 3 text family (gemma-3-270m, gemma-3-1b and the text tower of larger ones)."""
from __future__ import annotations

import gguf
import torch

from compress.errors import SlimkitError
from export.gguf.arch.base import ArchSpec, register

SLIDING = "sliding_attention"


@register
class Gemma3(ArchSpec):
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    family = "gemma3"

    def parameters(self, w: gguf.GGUFWriter) -> None:
        super().parameters(w)
        c = self.config
        if c.query_pre_attn_scalar != self.head_dim:
            # llama.cpp (llama_model_gemma3::load_arch_hparams) scales attention by 1/sqrt(head_dim)
            raise SlimkitError(f"query_pre_attn_scalar={c.query_pre_attn_scalar} != head_dim={self.head_dim}: "
                               "llama.cpp's gemma3 graph cannot represent this model")
        if getattr(c, "attn_logit_softcapping", None):
            raise SlimkitError("attn_logit_softcapping is not supported by llama.cpp's gemma3 graph")
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        global_rope = self.rope_parameters("full_attention")
        w.add_rope_freq_base(global_rope.get("rope_theta", 1_000_000.0))
        self.add_rope_scaling(w, global_rope)
        if getattr(c, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(c.final_logit_softcapping)
        layer_types = list(getattr(c, "layer_types", None) or [])
        if c.sliding_window and SLIDING in layer_types:
            w.add_sliding_window(c.sliding_window)
            w.add_sliding_window_pattern([t == SLIDING for t in layer_types])  # per-layer is_swa
            local = self.rope_parameters(SLIDING)
            w.add_rope_freq_base_swa(local.get("rope_theta", 10_000.0))

    def transform(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        # Gemma3RMSNorm computes x * (1 + w); llama.cpp multiplies by the stored weight.
        if hf_name.endswith("norm.weight"):
            return tensor + 1.0
        return tensor
