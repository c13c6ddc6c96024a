"""GGUFConfig: what `slimkit export gguf` (and `slimkit.export_gguf`) writes, validated on construction
before any model is loaded. The calibration fields are those of export.gguf.calibrated."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import SlimkitError
from compress.quant.plans import METHODS, NEEDS_GRAM

DEFAULT_CALIB_TOKENS = 8192  # 16 windows of 512: minutes on 2 cores, enough for a 135M-500M model's imatrix/GPTQ


@dataclass(frozen=True)
class GGUFConfig:
    VERSION: ClassVar[int] = 1  # of the to_dict/from_dict form (compress.config_io)
    type: str | None = None       # export.gguf.types.ALL_TYPES; None: a QAT checkpoint's trained blocks, else F16
    validate: bool = True         # run the file in llama.cpp and compare with torch
    method: str | None = None     # METHODS; None: gptq+imatrix with calib, imatrix with imatrix, else rtn
    calib: tuple[str, ...] = ()   # calibration text files
    imatrix: str | None = None    # an importance matrix file (GGUF or legacy .dat)
    calib_tokens: int = DEFAULT_CALIB_TOKENS
    calib_seq_len: int = 512
    gptq_damp: float = 1.0        # GPTQ Hessian damping, a fraction of the mean diagonal
    gptq_one_pass: bool = False   # GPTQ on the full-precision model's statistics (default: block by block)

    def __post_init__(self) -> None:
        from export.gguf import types as gtypes

        object.__setattr__(self, "calib", tuple(str(p) for p in self.calib))
        if self.method is not None and self.method not in METHODS:
            raise SlimkitError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.calib and self.imatrix:
            raise SlimkitError("give --calib FILE or --imatrix FILE, not both")
        method = self.resolved_method
        if method != "rtn" and not (self.calib or self.imatrix):
            raise SlimkitError(f"--method {method} needs calibration: give --calib FILE (or --imatrix FILE)")
        if method in NEEDS_GRAM and not self.calib:
            raise SlimkitError(f"--method {method} needs --calib FILE (Gram matrices); an imatrix file only serves "
                               "--method imatrix")
        if method == "rtn" and (self.calib or self.imatrix):
            raise SlimkitError("--method rtn uses no calibration; drop --calib/--imatrix or choose another --method")
        if method != "rtn" and (self.calib_tokens < self.calib_seq_len or self.calib_seq_len < 2):
            raise SlimkitError(f"--calib-tokens ({self.calib_tokens}) must hold at least one window of "
                               f"--calib-seq-len ({self.calib_seq_len}, at least 2)")
        if method in NEEDS_GRAM and self.gptq_damp <= 0:
            raise SlimkitError(f"--gptq-damp must be > 0, got {self.gptq_damp}")
        if method != "rtn" and self.type is None:
            raise SlimkitError(f"--method {method} needs an explicit --type (e.g. --type Q4_0)")
        if self.type is None:
            return
        etype = gtypes.parse(self.type)   # an unknown type: its one-line error
        if method == "rtn":
            return
        if etype.is_float:
            raise SlimkitError(f"--method {method} calibrates quantized types; {self.type} is a float type")
        if method in NEEDS_GRAM and etype.name not in gtypes.GPTQ_TYPES:
            raise SlimkitError(f"--method {method} does not apply to {etype.name}: slimkit's GPTQ writes "
                               f"{', '.join(gtypes.GPTQ_TYPES)} mixes; use --method imatrix")

    @property
    def resolved_method(self) -> str:
        return self.method or ("gptq+imatrix" if self.calib else "imatrix" if self.imatrix else "rtn")

    def to_dict(self) -> dict[str, Any]:
        from compress import config_io

        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GGUFConfig:
        from compress import config_io

        return config_io.from_dict(cls, d)
