"""Which GGUF tensor type each tensor gets, for each --type a user can ask for.

Types slimkit writes itself pack blocks with compress.quant.formats; every other llama.cpp type
goes through llama.cpp's own quantizer (llama_model_quantize) from an F32 intermediate.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf

from compress.errors import SlimkitError
from compress.quant import formats

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# --type NAME -> (llama.cpp file type, the tensor type slimkit writes, or None for llama.cpp's quantizer)
NATIVE: dict[str, tuple[FT, Q]] = {
    "F32": (FT.ALL_F32, Q.F32),
    "F16": (FT.MOSTLY_F16, Q.F16),
    "BF16": (FT.MOSTLY_BF16, Q.BF16),
    "Q8_0": (FT.MOSTLY_Q8_0, Q.Q8_0),
    "Q4_0": (FT.MOSTLY_Q4_0, Q.Q4_0),
    "Q4_1": (FT.MOSTLY_Q4_1, Q.Q4_1),
    "Q5_0": (FT.MOSTLY_Q5_0, Q.Q5_0),
    "Q5_1": (FT.MOSTLY_Q5_1, Q.Q5_1),
}
# llama.cpp's quantizer; IQ1/IQ2/IQ3 types need an importance matrix and are left out.
LLAMA_CPP: dict[str, FT] = {name: FT[f"MOSTLY_{name}"] for name in (
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
    "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0")}
ALL_TYPES = tuple(NATIVE) + tuple(LLAMA_CPP)
# Mixes in which GPTQ has tensors to optimise: their types (or llama.cpp's shape fallbacks) include
# one slimkit packs. IQ4_NL / IQ4_XS / TQ* files hold none (their fallbacks are IQ4_NL / Q4_0 only on
# odd shapes), so GPTQ is refused for them before any work.
GPTQ_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
              "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")
FLOAT_TYPES = ("F32", "F16", "BF16")
# In a 4/5-bit file the embedding/output matrix stays 8-bit (llama.cpp's own Q4_0..Q5_1 mixes keep
# the output at Q6_K; Q8_0 is the closest legacy type slimkit packs itself).
LOW_BIT = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)
KEEP_8BIT = ("token_embd.weight", "output.weight")


@dataclass(frozen=True)
class ExportType:
    name: str  # canonical --type name, e.g. "Q4_K_M"
    file_type: FT

    @property
    def native(self) -> bool:
        return self.name in NATIVE

    @property
    def is_float(self) -> bool:
        return self.name in FLOAT_TYPES


def parse(name: str) -> ExportType:
    key = name.upper().replace("-", "_")
    if key in NATIVE:
        return ExportType(key, NATIVE[key][0])
    if key in LLAMA_CPP:
        return ExportType(key, LLAMA_CPP[key])
    raise SlimkitError(f"unknown GGUF type {name!r}; choose one of: {', '.join(ALL_TYPES)}")


def tensor_type(gguf_name: str, shape: tuple[int, ...], etype: ExportType) -> Q:
    """The type one tensor is written with (the rules of convert_hf_to_gguf's prepare_tensors)."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return Q.F32  # ggml's norm/1-D ops take F32 only
    if not etype.native:
        return Q.F32  # intermediate for llama.cpp's quantizer
    want = NATIVE[etype.name][1]
    if want in LOW_BIT and gguf_name in KEEP_8BIT:
        want = Q.Q8_0
    if want.name in formats.PACKED_TYPES and not formats.can_quantize(shape, want.name):
        return Q.F16  # rows not a whole number of 32-blocks: the converter's fallback
    return want


def file_type_of(plan: dict) -> str:
    """The --type name a QAT plan's file is labelled with (general.file_type): its bulk type."""
    from compress.quant.qat import QATPlan

    main = QATPlan.from_dict(plan).main_type
    return {"Q4_K": "Q4_K_M"}.get(main, main)
