"""`slimkit export gguf` and `slimkit export onnx`: flags, GGUFConfig / OnnxConfig from them, the commands."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from export.gguf.types import ALL_TYPES
from slimkit.calibrate import calib_flags, gguf_config
from slimkit.commands import flag

__all__ = ["GGUF_FLAGS", "ONNX_FLAGS", "cmd_export_gguf", "cmd_export_onnx", "gguf_config", "onnx_config"]

GGUF_FLAGS = (
    flag("source", help="HF directory, .gguf file or zoo name"),
    flag("-o", "--output", required=True, type=Path, help="output .gguf file"),
    flag("--type", default=None, metavar="TYPE", help=f"tensor type: {', '.join(ALL_TYPES)} (default: "
         "the blocks a `slimkit qat` checkpoint trained, else F16)"),
    flag("--no-validate", action="store_true", help="skip the llama.cpp parity check"),
    flag("--imatrix", type=Path, default=None, metavar="FILE",
         help="importance matrix (GGUF or legacy .dat, from `slimkit imatrix` or llama-imatrix)"),
    *calib_flags(),
)

ONNX_FLAGS = (
    flag("source", help="HF directory, .gguf file or zoo name"),
    flag("-o", "--output", required=True, type=Path, help="output directory"),
    flag("--precision", default="fp32", metavar="P", help="fp32 | fp16 | int8 | int4 (int8/int4: MatMulNBits weights)"),
    flag("--block-size", type=int, default=None, help="int8/int4 quantization block size (default 32)"),
    flag("--no-validate", action="store_true", help="skip the ONNX Runtime parity checks"),
)


def onnx_config(args: argparse.Namespace) -> Any:
    from slimkit.configs import OnnxConfig

    return OnnxConfig(args.precision, args.block_size, not args.no_validate)


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from slimkit.verbs import export_gguf

    res = export_gguf(args.source, gguf_config(args), args.output)
    print(f"wrote {res.path} ({res.type}{', trained QAT blocks' if res.trained else ''}, {res.file_mb:.1f} MB) "
          f"in {res.seconds:.1f} s")
    if res.validation:
        v = res.validation
        print(f"validated in llama.cpp on {v['n_tokens']} tokens: tokenizer identical, "
              f"max |dlogit| {v['max_abs_diff']:.3g}, top-1 agreement {v['top1_agreement']:.3f}, "
              f"mean KL {v['mean_kl']:.3g}" + (f"; stored weights max |dlogit| {v['stored']['max_abs_diff']:.3g} "
                                               f"(tolerance {v['tolerance']:.3g})" if "tolerance" in v else ""))
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from slimkit.verbs import export_onnx

    res = export_onnx(args.source, onnx_config(args), args.output)
    print(f"wrote {res.path} (ONNX {res.precision}, {res.file_mb:.1f} MB) in {res.seconds:.1f} s")
    if res.validation:
        v, kv, g = res.validation, res.validation["kv_cache"], res.validation["greedy"]
        print(f"validated in ONNX Runtime on {v['n_tokens']} tokens: tokenizer identical, max |dlogit| "
              f"{v['max_abs_diff']:.3g}" + (f" (tolerance {v['tolerance']:.3g})" if "tolerance" in v else "")
              + f", top-1 agreement {v['top1_agreement']:.3f}, mean KL {v['mean_kl']:.3g}; KV cache vs full "
              f"recomputation {kv['max_abs_diff']:.3g} (tolerance {kv['tolerance']:.3g}); greedy {g['tokens']} "
              f"tokens {'identical to' if g['identical'] else 'differ from'} torch")
    return 0
