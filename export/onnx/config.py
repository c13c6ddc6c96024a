"""The ONNX export configuration: one frozen dataclass, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import SlimkitError

PRECISIONS = ("fp32", "fp16", "int8", "int4")
QUANTIZED = ("int8", "int4")  # MatMulNBits weights (ONNX Runtime's MatMulNBitsQuantizer)
# MatMulNBits block sizes ONNX Runtime's CPU kernels accept (power of two, >= 16).
BLOCK_SIZES = (16, 32, 64, 128, 256)
DEFAULT_BLOCK_SIZE = 32
# MatMulNBits accuracy_level 4: activations are quantized to int8 per block at run time (dynamic
# quantization) and multiplied with the int8/int4 weights in int8, like llama.cpp's Q8_0/Q4_0
# CPU path; the model builder's CPU default.
ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class OnnxExportConfig:
    VERSION: ClassVar[int] = 1  # of the to_dict/from_dict form (compress.config_io)
    precision: str = "fp32"
    block_size: int | None = None  # int8/int4 only; DEFAULT_BLOCK_SIZE when None (set so on construction)
    validate: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SlimkitError(f"unsupported ONNX precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.block_size is not None:
            if self.precision not in QUANTIZED:
                raise SlimkitError(f"--block-size applies to int8 and int4 only (MatMulNBits), not {self.precision}; "
                                   "drop it or use --precision int8/int4")
            if self.block_size not in BLOCK_SIZES:
                raise SlimkitError(f"unsupported quantization block size {self.block_size}; "
                                   f"choose one of {', '.join(map(str, BLOCK_SIZES))}")
        elif self.precision in QUANTIZED:
            object.__setattr__(self, "block_size", DEFAULT_BLOCK_SIZE)   # the same config, one form

    @property
    def quant_block_size(self) -> int:
        return self.block_size or DEFAULT_BLOCK_SIZE

    def to_dict(self) -> dict[str, Any]:
        from compress import config_io

        d = config_io.to_dict(self)
        if self.precision in QUANTIZED:
            d.update(accuracy_level=ACCURACY_LEVEL)   # a fact of the export, not an option
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OnnxExportConfig:
        from compress import config_io

        return config_io.from_dict(cls, {k: v for k, v in d.items() if k != "accuracy_level"})
