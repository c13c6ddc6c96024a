"""CLI glue for calibration: `slimkit imatrix`, and the --calib/--imatrix/--method flags that
`slimkit export gguf` and `slimkit qat` share (slimkit.commands.Flag data). Options parse into the library's objects
(compress.calib statistics, export.gguf.calibrated.Calibration); no logic lives here."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from compress.quant.plans import METHODS, NEEDS_GRAM
from export.gguf.config import DEFAULT_CALIB_TOKENS
from slimkit.commands import Flag, flag


def calib_flags(methods: tuple[str, ...] = METHODS, name: str = "--method") -> tuple[Flag, ...]:
    return (
        flag("--calib", action="append", type=Path, default=None, metavar="FILE",
             help="calibration text (.txt/.gz/.jsonl, repeatable); without it and without --imatrix, rtn"),
        flag("--calib-tokens", type=int, default=DEFAULT_CALIB_TOKENS, metavar="N",
             help=f"calibration tokens (default {DEFAULT_CALIB_TOKENS}, in windows of --calib-seq-len)"),
        flag("--calib-seq-len", type=int, default=512, metavar="N", help="calibration window (default 512)"),
        flag(name, dest="method", default=None, choices=methods,
             help="rtn | imatrix (llama.cpp's importance-weighted quantizers) | gptq | gptq+imatrix (GPTQ error "
                  "feedback, reference or weighted block scales); default gptq+imatrix with --calib, "
                  "imatrix with --imatrix, else rtn"),
        flag("--gptq-damp", type=float, default=1.0, metavar="X", help="GPTQ Hessian damping, a fraction of "
             "the mean diagonal (default 1.0: robust when the calibration text differs from the use)"),
        flag("--gptq-one-pass", action="store_true", help="GPTQ every block on the full-precision model's "
             "statistics (one pass; default: block by block on the already quantized blocks' outputs)"),
    )


def gguf_config(args: argparse.Namespace) -> Any:
    """The export.gguf.config.GGUFConfig that `slimkit export gguf`'s options describe (validated)."""
    from export.gguf.config import GGUFConfig

    return GGUFConfig(type=args.type, validate=not args.no_validate, method=args.method,
                      calib=tuple(str(p) for p in args.calib or ()),
                      imatrix=str(args.imatrix) if args.imatrix else None, calib_tokens=args.calib_tokens,
                      calib_seq_len=args.calib_seq_len, gptq_damp=args.gptq_damp, gptq_one_pass=args.gptq_one_pass)


def collect_stats(ckpt: Any, args: argparse.Namespace, gram: bool) -> tuple[Any, Any]:
    """(calibration statistics of ckpt's model on the --calib files, the token windows)."""
    from compress.calib import calibration_windows, collect

    windows, source = calibration_windows(ckpt.model, ckpt.tokenizer, args.calib, args.calib_tokens,
                                          args.calib_seq_len)
    return collect(ckpt.model, windows, gram=gram, source=source), windows


def calibration(ckpt: Any, args: Any, method: str) -> Any:
    """The export.gguf.calibrated.Calibration that --calib/--imatrix describe (`args`: the parsed
    options or a GGUFConfig, which has the same names)."""
    from compress.quant.gptq import GPTQConfig
    from export.gguf import imatrix as imx
    from export.gguf.calibrated import Calibration

    gcfg = GPTQConfig(damp=args.gptq_damp, sequential=not args.gptq_one_pass)
    if getattr(args, "imatrix", None):
        return Calibration(imatrix=imx.read(args.imatrix), imatrix_path=str(args.imatrix), gptq=gcfg)
    # sequential GPTQ collects its Gram matrices block by block; the first pass gives the imatrix
    stats, windows = collect_stats(ckpt, args, gram=method in NEEDS_GRAM and not gcfg.sequential)
    return Calibration(stats=stats, windows=windows, gptq=gcfg)


def export_source(source: Any, out: str | Path, cfg: Any) -> tuple[Any, str, Any]:
    """(source or loaded checkpoint, method, Calibration or None) for a GGUF export with GGUFConfig
    `cfg` (checked on construction, before any model is loaded and calibrated)."""
    import os

    from compress.checkpoint import Checkpoint, load
    from compress.errors import SlimkitError

    method = cfg.resolved_method
    if method == "rtn":
        return source, method, None
    parent = Path(out).parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise SlimkitError(f"output directory {parent} does not exist or is not writable; choose another -o path")
    ckpt = source if isinstance(source, Checkpoint) else load(source)
    return ckpt, method, calibration(ckpt, cfg, method)


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
