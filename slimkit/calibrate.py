"""CLI glue for calibration: `slimkit imatrix`, and the --calib/--imatrix/--method options that
`slimkit export gguf` and `slimkit qat` share. Options parse into the library's objects
(compress.calib statistics, export.gguf.calibrated.Calibration); no logic lives here."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from compress.quant.plans import METHODS, NEEDS_GRAM

DEFAULT_CALIB_TOKENS = 8192  # 16 windows of 512: minutes on 2 cores, enough for a 135M-500M model's imatrix/GPTQ


def add_calib_args(s: argparse.ArgumentParser, methods: tuple[str, ...] = METHODS, flag: str = "--method") -> None:
    s.add_argument("--calib", action="append", type=Path, default=None, metavar="FILE",
                   help="calibration text (.txt/.gz/.jsonl, repeatable); without it and without --imatrix, rtn")
    s.add_argument("--calib-tokens", type=int, default=DEFAULT_CALIB_TOKENS, metavar="N",
                   help=f"calibration tokens (default {DEFAULT_CALIB_TOKENS}, in windows of --calib-seq-len)")
    s.add_argument("--calib-seq-len", type=int, default=512, metavar="N", help="calibration window (default 512)")
    s.add_argument(flag, dest="method", default=None, choices=methods,
                   help="rtn | imatrix (llama.cpp's importance-weighted quantizers) | gptq | gptq+imatrix (GPTQ error "
                        "feedback, reference or weighted block scales); default gptq+imatrix with --calib, "
                        "imatrix with --imatrix, else rtn")
    s.add_argument("--gptq-damp", type=float, default=1.0, metavar="X", help="GPTQ Hessian damping, a fraction of "
                   "the mean diagonal (default 1.0: robust when the calibration text differs from the use)")
    s.add_argument("--gptq-one-pass", action="store_true", help="GPTQ every block on the full-precision model's "
                   "statistics (one pass; default: block by block on the already quantized blocks' outputs)")


def resolve_method(args: argparse.Namespace) -> str:
    from compress.errors import SlimkitError

    imatrix = getattr(args, "imatrix", None)
    if args.calib and imatrix:
        raise SlimkitError("give --calib FILE or --imatrix FILE, not both")
    method = args.method or ("gptq+imatrix" if args.calib else "imatrix" if imatrix else "rtn")
    if method != "rtn" and not (args.calib or imatrix):
        raise SlimkitError(f"--method {method} needs calibration: give --calib FILE (or --imatrix FILE)")
    if method in NEEDS_GRAM and not args.calib:
        raise SlimkitError(f"--method {method} needs --calib FILE (Gram matrices); an imatrix file only serves "
                           "--method imatrix")
    if method == "rtn" and (args.calib or imatrix):
        raise SlimkitError("--method rtn uses no calibration; drop --calib/--imatrix or choose another --method")
    return method


def collect_stats(ckpt: Any, args: argparse.Namespace, gram: bool) -> tuple[Any, Any]:
    """(calibration statistics of ckpt's model on the --calib files, the token windows)."""
    from compress.calib import calibration_windows, collect

    windows, source = calibration_windows(ckpt.model, ckpt.tokenizer, args.calib, args.calib_tokens,
                                          args.calib_seq_len)
    return collect(ckpt.model, windows, gram=gram, source=source), windows


def calibration(ckpt: Any, args: argparse.Namespace, method: str) -> Any:
    """The export.gguf.calibrated.Calibration that --calib/--imatrix describe."""
    from compress.quant.gptq import GPTQConfig
    from export.gguf import imatrix as imx
    from export.gguf.calibrated import Calibration

    gcfg = GPTQConfig(damp=args.gptq_damp, sequential=not args.gptq_one_pass)
    if getattr(args, "imatrix", None):
        return Calibration(imatrix=imx.read(args.imatrix), imatrix_path=str(args.imatrix), gptq=gcfg)
    # sequential GPTQ collects its Gram matrices block by block; the first pass gives the imatrix
    stats, windows = collect_stats(ckpt, args, gram=method in NEEDS_GRAM and not gcfg.sequential)
    return Calibration(stats=stats, windows=windows, gptq=gcfg)


def export_source(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """(source or loaded checkpoint, method, Calibration or None) for `slimkit export gguf`; every
    check that needs no model runs before the model is loaded and calibrated."""
    import os

    from compress.checkpoint import load
    from compress.errors import SlimkitError
    from export.gguf import types as gtypes

    method = resolve_method(args)
    if method == "rtn":
        return args.source, method, None
    if args.type is None:
        raise SlimkitError(f"--method {method} needs an explicit --type (e.g. --type Q4_0)")
    etype = gtypes.parse(args.type)
    if etype.is_float:
        raise SlimkitError(f"--method {method} calibrates quantized types; {args.type} is a float type")
    if method in NEEDS_GRAM and etype.name not in gtypes.GPTQ_TYPES:
        raise SlimkitError(f"--method {method} does not apply to {etype.name}: slimkit's GPTQ writes "
                           f"{', '.join(gtypes.GPTQ_TYPES)} mixes; use --method imatrix")
    parent = Path(args.output).parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise SlimkitError(f"output directory {parent} does not exist or is not writable; choose another -o path")
    ckpt = load(args.source)
    return ckpt, method, calibration(ckpt, args, method)


def cmd_imatrix(args: argparse.Namespace) -> int:
    from compress.checkpoint import load
    from compress.errors import SlimkitError
    from export.gguf import imatrix as imx
    from export.gguf.calibrated import imatrix_names

    out = Path(args.output)
    if not out.parent.is_dir():
        raise SlimkitError(f"output directory {out.parent} does not exist; create it first")
    if not args.calib:
        raise SlimkitError("slimkit imatrix needs --calib FILE (calibration text)")
    ckpt = load(args.source)
    stats, _ = collect_stats(ckpt, args, gram=False)
    names = imatrix_names(ckpt)
    im = imx.from_stats(stats, names, [", ".join(str(p) for p in args.calib)], args.calib_seq_len)
    (imx.write_legacy if out.suffix == ".dat" else imx.write)(im, out)
    print(f"wrote {out} ({len(im.sums)} entries, {stats.tokens} tokens in {im.chunk_count} chunks of "
          f"{args.calib_seq_len}{', legacy .dat format' if out.suffix == '.dat' else ''})")
    return 0


def add_imatrix_parser(sub: Any) -> None:
    s = sub.add_parser("imatrix", help="compute an importance matrix (llama.cpp's GGUF imatrix format; .dat: legacy)")
    s.add_argument("source", help="HF directory, .gguf file or zoo name")
    s.add_argument("-o", "--output", required=True, type=Path, help="output imatrix (.gguf, or .dat for the legacy format)")
    s.add_argument("--calib", action="append", type=Path, default=None, metavar="FILE", help="calibration text (repeatable)")
    s.add_argument("--calib-tokens", type=int, default=DEFAULT_CALIB_TOKENS, metavar="N")
    s.add_argument("--calib-seq-len", type=int, default=512, metavar="N")
    s.set_defaults(func=cmd_imatrix)
