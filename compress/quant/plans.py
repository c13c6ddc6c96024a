"""QAT type plans: which GGUF type each weight trains (and is exported) in. Pure data and
validation, no torch: the CLI builds its options from PRESETS without importing the trainer."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import SlimkitError

FLOAT = ("F32", "F16")  # F32: untouched; F16: trained through fp16 rounding
LEARNABLE = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # formats.BlockType; the K-quants have only the reference path
TYPES = FLOAT + LEARNABLE + ("Q4_K", "Q6_K")  # = FLOAT + formats.PACKED_TYPES (tested)
# Post-training methods (compress.quant.calibrated): rtn = ggml's reference quantizers; imatrix = its
# importance-weighted ones; gptq / gptq+imatrix = GPTQ error feedback with reference / weighted scales.
METHODS = ("rtn", "imatrix", "gptq", "gptq+imatrix")
NEEDS_GRAM = ("gptq", "gptq+imatrix")
# llama_tensor_get_type's fallback for rows that are not whole 256-blocks (llama-quant.cpp)
K_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
# Type mixes by name pattern (fnmatch over module names, first match wins), like llama.cpp's:
# the embedding / output matrix stays 8-bit (llama.cpp's own Q4_0 mix keeps it at Q6_K).
PRESETS: dict[str, tuple[tuple[str, str], ...]] = {
    "q8_0": (("*", "Q8_0"),),
    **{name.lower(): (("*embed_tokens", "Q8_0"), ("lm_head", "Q8_0"), ("*", name))
       for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1")},
    "q4_0-pure": (("*", "Q4_0"),),
    "q4_k": (("*embed_tokens", "Q6_K"), ("lm_head", "Q6_K"), ("*", "Q4_K")),
}


@dataclass(frozen=True)
class QATPlan:
    """Which GGUF type each weight trains (and is exported) in.

    `rules` ("pattern=TYPE" pairs over module names, e.g. ("model.layers.*.mlp.down_proj", "Q8_0"))
    are tried before the preset's. A weight whose rows are not a whole number of blocks falls back
    to F16, as the GGUF writer does.
    """

    VERSION: ClassVar[int] = 1  # of the to_dict/from_dict form (compress.config_io)
    preset: str = "q4_0"
    rules: tuple[tuple[str, str], ...] = ()
    learn_scales: bool = False
    # Step 0: the blocks of a post-training method (METHODS) on `calib` text instead of round-to-nearest.
    init: str = "rtn"
    calib: tuple[str, ...] = ()
    calib_tokens: int = 8192
    calib_seq_len: int = 512
    damp: float = 1.0  # GPTQ damping (compress.quant.gptq.DEFAULT_DAMP)
    sequential: bool = True  # GPTQ block by block on the quantized blocks' outputs (compress.quant.sequential)

    def __post_init__(self) -> None:
        if self.init not in METHODS:
            raise SlimkitError(f"unknown --init {self.init!r}; choose one of {', '.join(METHODS)}")
        if self.init != "rtn" and not self.calib:
            raise SlimkitError(f"--init {self.init} needs calibration text: give --calib FILE")
        if self.init == "rtn" and self.calib:
            raise SlimkitError("--calib only serves --init imatrix|gptq|gptq+imatrix; add one or drop --calib")
        if self.preset not in PRESETS:
            raise SlimkitError(f"unknown QAT plan {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for pattern, qtype in self.rules:
            if qtype not in TYPES:
                raise SlimkitError(f"rule {pattern}={qtype}: unknown type; choose one of {', '.join(TYPES)}")
        if self.learn_scales and any(t not in LEARNABLE + FLOAT for _, t in self.all_rules):
            raise SlimkitError(f"--learn-scales works with {', '.join(LEARNABLE)}; the K-quants train with "
                               "llama.cpp's reference scales only")
        if self.init != "rtn" and any(t not in LEARNABLE + FLOAT for _, t in self.all_rules):
            raise SlimkitError(f"--init {self.init} works with plans of {', '.join(LEARNABLE)} blocks (their scales "
                               "are kept through training); the K-quants train from llama.cpp's reference scales")

    @property
    def all_rules(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.rules) + PRESETS[self.preset]

    @property
    def main_type(self) -> str:
        """The type of the bulk of the weights (the GGUF file type)."""
        return PRESETS[self.preset][-1][1]

    def type_for(self, module_name: str, weight_shape: tuple[int, ...]) -> str:
        from compress.quant import formats

        qtype = next((t for p, t in self.all_rules if fnmatch.fnmatchcase(module_name, p)), "F32")
        if qtype in K_FALLBACK and not formats.can_quantize(weight_shape, qtype):
            qtype = K_FALLBACK[qtype]  # rows not a multiple of 256: llama.cpp's own fallback
        if qtype in formats.PACKED_TYPES and not formats.can_quantize(weight_shape, qtype):
            return "F16"
        return qtype

    def to_dict(self) -> dict[str, Any]:
        from compress import config_io

        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QATPlan":
        from compress import config_io

        return config_io.from_dict(cls, d)

    @classmethod
    def parse_rules(cls, preset: str, rules: list[str], learn_scales: bool = False, **init: Any) -> "QATPlan":
        pairs = []
        for rule in rules:
            pattern, sep, qtype = rule.rpartition("=")
            if not sep or not pattern:
                raise SlimkitError(f"--type-rule {rule!r}: expected PATTERN=TYPE, e.g. 'model.layers.*.mlp.down_proj=Q8_0'")
            pairs.append((pattern, qtype.upper()))
        return cls(preset.lower(), tuple(pairs), learn_scales, **init)
