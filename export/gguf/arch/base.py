"""Base class of an exported architecture: two hooks, parameters() and tensors().

Like llama.cpp's convert_hf_to_gguf.py model classes, a family overrides only what differs:
the metadata it writes and how HF tensors become GGUF tensors. HF -> GGUF tensor names come
from the gguf package's TensorNameMap, never from strings typed here.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator

import gguf
import torch

from compress import families
from compress.errors import SlimkitError

_REGISTRY: dict[str, type["ArchSpec"]] = {}   # slimkit family name (compress.families) -> exporter


def register(cls: type["ArchSpec"]) -> type["ArchSpec"]:
    fam = families.get(cls.family)
    if gguf.MODEL_ARCH_NAMES[cls.gguf_arch] != fam.gguf_arch:
        raise RuntimeError(f"{cls.__name__} writes {gguf.MODEL_ARCH_NAMES[cls.gguf_arch]!r}, the registry says "
                           f"{fam.gguf_arch!r} for {fam.name}")
    _REGISTRY[fam.name] = cls
    return cls


def registered() -> dict[str, type["ArchSpec"]]:
    return dict(_REGISTRY)


def get(config: Any) -> "ArchSpec":
    fam = families.by_model_type(config.model_type)
    cls = _REGISTRY.get(fam.name)
    if cls is None:
        raise SlimkitError(f"no GGUF exporter for the {fam.name} family; supported: {', '.join(sorted(_REGISTRY))}")
    return cls.for_config(config)


class ArchSpec:
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    family: ClassVar[str]          # its compress.families entry

    @classmethod
    def for_config(cls, config: Any) -> "ArchSpec":
        """The exporter for this config (a family may write another llama.cpp graph for some shapes)."""
        return cls(config)

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name_map = gguf.get_tensor_name_map(self.gguf_arch, config.num_hidden_layers)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    @property
    def head_dim(self) -> int:
        c = self.config
        return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads

    # -- hook 1: hyper-parameters ------------------------------------------------------------
    def parameters(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(c.num_hidden_layers)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(c.num_attention_heads)
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_vocab_size(c.vocab_size)

    def rope_parameters(self, layer_type: str | None = None) -> dict[str, Any]:
        rope = getattr(self.config, "rope_parameters", None) or {}
        if layer_type is not None and layer_type in rope:
            rope = rope[layer_type]
        elif "full_attention" in rope:
            rope = rope["full_attention"]
        rope_type = rope.get("rope_type", "default")
        if rope_type not in self.rope_types:
            raise SlimkitError(f"rope_type {rope_type!r} is not supported by slimkit's GGUF exporter for "
                               f"{self.family} (supported: {', '.join(self.rope_types)})")
        return rope

    rope_types: ClassVar[tuple[str, ...]] = ("default", "linear")

    def extra_tensors(self) -> Iterator[tuple[str, str, torch.Tensor]]:
        """(pseudo HF name, GGUF name, float32 tensor) of tensors the file needs beyond the weights."""
        return iter(())

    def add_rope_scaling(self, w: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
        if rope.get("rope_type") == "linear" and rope.get("factor"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rope["factor"])

    # -- hook 2: tensors ---------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str:
        name = self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SlimkitError(f"tensor {hf_name!r} has no GGUF name for {self.arch_name}; "
                               "the checkpoint does not match its config")
        return name

    def transform(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Per-family rewrite of one tensor's values (identity by default)."""
        return tensor

    def tensors(self, state_dict: dict[str, torch.Tensor]) -> Iterator[tuple[str, str, torch.Tensor]]:
        """(HF name, GGUF name, transformed float32 tensor) of every tensor the file stores."""
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        for hf_name, tensor in state_dict.items():
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp reuses token_embd when output.weight is absent
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            yield hf_name, self.gguf_name(hf_name), self.transform(hf_name, tensor.detach().to(torch.float32))
        yield from self.extra_tensors()
