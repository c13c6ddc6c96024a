"""The one registry of model families: every stage reads it, nothing else names a family.

A family is what slimkit calls a decoder architecture: its Hugging Face model_type(s), its GGUF
architecture name (llama.cpp's LLM_ARCH_* string), the structure the stages need to know (norms,
biases, per-head q/k norms), the architecture name onnxruntime-genai's model builder dispatches
on, and its default chat format for Ollama. The GGUF exporter keeps one module per family
(export/gguf/arch/, llama.cpp style) registered under the same name; a test fails when a family
here lacks an exporter, an ONNX name, a chat format or a tiny model in the round-trip tests.
"""
from __future__ import annotations

from dataclasses import dataclass

from compress.errors import SlimkitError


@dataclass(frozen=True)
class Family:
    name: str                      # slimkit's name (the GGUF exporter's module, history["family"])
    hf_model_types: tuple[str, ...]
    gguf_arch: str                 # general.architecture in GGUF
    onnx_architecture: str         # onnxruntime-genai builder's architecture name
    chat_format: str               # export.ollama.CHAT_FORMATS key when the GGUF names none
    description: str
    norms_per_layer: int = 2       # RMSNorm vectors of width `hidden` per block
    qk_norm: bool = False          # q and k normalised per head (one head_dim vector each)
    o_bias_with_attention_bias: bool = False   # attention_bias also biases o_proj
    qkv_bias: bool | None = None   # q/k/v always biased (Qwen2); None: the config's attention_bias


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), "llama", "LlamaForCausalLM", "chatml", "Llama-style decoders (SmolLM2, Llama 2/3)"),
    Family("gemma3", ("gemma3_text",), "gemma3", "Gemma3ForCausalLM", "gemma", "Gemma 3 text decoders",
           norms_per_layer=4, qk_norm=True, o_bias_with_attention_bias=True),
    Family("qwen2", ("qwen2",), "qwen2", "Qwen2ForCausalLM", "chatml", "Qwen2 / Qwen2.5 decoders", qkv_bias=True),
    Family("qwen3", ("qwen3",), "qwen3", "Qwen3ForCausalLM", "chatml", "Qwen3 dense decoders", qk_norm=True),
    # llama.cpp runs Mistral in its llama graph (convert_hf_to_gguf writes general.architecture llama)
    Family("mistral", ("mistral",), "llama", "MistralForCausalLM", "chatml", "Mistral 7B-style decoders"),
)

_BY_NAME = {f.name: f for f in FAMILIES}
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.hf_model_types}
_BY_GGUF: dict[str, Family] = {}
for _f in FAMILIES:   # a GGUF's architecture loads as the first family that writes it (llama, not mistral)
    _BY_GGUF.setdefault(_f.gguf_arch, _f)


def supported() -> str:
    """The supported families in words, for error messages."""
    return "; ".join(f"{f.name} ({f.description}; HF model_type {', '.join(f.hf_model_types)})" for f in FAMILIES)


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def get(name: str) -> Family:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise SlimkitError(f"unknown model family {name!r}; slimkit supports {supported()}") from None


def by_model_type(model_type: str | None) -> Family:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise SlimkitError(f"unsupported architecture {model_type!r}; slimkit supports {supported()}") from None


def by_gguf_arch(arch: str) -> Family:
    try:
        return _BY_GGUF[arch]
    except KeyError:
        raise SlimkitError(f"unsupported GGUF architecture {arch!r}; slimkit supports {supported()}") from None


def gguf_archs() -> tuple[str, ...]:
    return tuple(_BY_GGUF)
