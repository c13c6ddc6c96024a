"""`slimkit prune`: flags, PruneConfig from them, the command."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from slimkit.commands import flag, print_table

SHAPE_FLAGS = (("layers", "decoder blocks"), ("hidden", "hidden width"), ("ffn", "FFN width"),
               ("heads", "query heads"), ("kv-heads", "KV heads (groups)"))


def _count(text: str) -> float:
    """A ratio (0.75) or a count with an optional K/M/B suffix (70M)."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9}.get(text[-1:].lower(), 1)
    try:
        return float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio like 0.75 or a count like 70M, got {text!r}") from None


PRUNE_FLAGS = (
    flag("source", help="HF directory, .gguf file or zoo name"),
    flag("-o", "--output", required=True, type=Path, help="output HF checkpoint directory"),
    flag("--target-params", type=_count, default=None, metavar="N|RATIO",
         help="parameters to keep: a ratio in (0,1] of the model's or an absolute count "
              "(non-embedding unless --count-embeddings)"),
    *(flag(f"--{dim}", type=int, default=None, help=f"explicit shape: {what}") for dim, what in SHAPE_FLAGS),
    flag("--method", default="minitron", choices=["minitron", "taylor", "magnitude", "random", "block-influence"],
         help="importance: calibration activations (minitron), first-order Taylor, weight magnitude, "
              "random; block-influence removes whole blocks only"),
    flag("--calib", type=Path, default=None, help="calibration text (.txt or .gz), or `self`: text sampled "
         "from the model itself (seeded by --seed); needed by minitron, taylor, block-influence, and by the shape "
         "search"),
    flag("--calib-tokens", type=int, default=16384, help="calibration tokens (default 16384)"),
    flag("--calib-ctx", type=int, default=512, help="calibration window length (default 512)"),
    flag("--align", type=int, default=32, help="round pruned widths to multiples of N (32 suits Q4_0/Q8_0 "
         "blocks, 256 K-quant rows; 1 turns it off)"),
    flag("--count-embeddings", action="store_true", help="--target-params counts embeddings too"),
    flag("--depth-metric", default="influence", choices=["influence", "ppl"],
         help="rank blocks by block influence (ShortGPT) or by the loss increase when dropped"),
    flag("--seed", type=int, default=0, help="seed of the random method"),
    flag("--recover", choices=["ls", "none"], default=None, help="repair the pruned model from calibration "
         "activations: least-squares refits of pruned layers and linear bridges over removed blocks "
         "(default: ls when --calib is given)"),
    flag("--recover-tokens", type=int, default=None, help="calibration tokens the recovery fits on "
         "(default 8192, at most --calib-tokens)"),
    flag("--recover-damp", type=float, default=None, help="ridge toward the pruned weights, relative "
         "to the mean diagonal of X^T X (default: compress.prune.recover.DEFAULT_DAMP, 0.1)"),
    flag("--bridge", choices=["ls", "cosine"], default="ls", help="objective of the linear bridges over "
         "removed blocks (ReplaceMe): least squares or cosine distance"),
    flag("--recover-target", choices=["local", "dense"], default="local", help="what the refits match: "
         "the dense modules run on the pruned model's own activations (local), or the dense model's outputs"),
    flag("--plan-only", action="store_true", help="print the plan and stop"),
)


def prune_config(args: argparse.Namespace) -> Any:
    from compress.prune import PruneConfig

    shape = {k: getattr(args, k) for k in ("layers", "hidden", "ffn", "heads", "kv_heads") if getattr(args, k)}
    return PruneConfig(method=args.method, target_params=args.target_params, shape=shape,
                       count_embeddings=args.count_embeddings, calib=str(args.calib) if args.calib else None,
                       calib_tokens=args.calib_tokens, calib_ctx=args.calib_ctx, align=args.align,
                       depth_metric=args.depth_metric, seed=args.seed, recover=args.recover,
                       recover_tokens=args.recover_tokens, bridge=args.bridge, recover_target=args.recover_target,
                       **({} if args.recover_damp is None else {"recover_damp": args.recover_damp}))


def cmd_prune(args: argparse.Namespace) -> int:
    from compress.checkpoint import save
    from compress.prune import prune

    cfg = prune_config(args)
    if not args.plan_only:
        _check_writable(args.output)
    res = prune(args.source, cfg, plan_only=args.plan_only, on_plan=_print_plan)
    if args.plan_only:
        return 0
    out = save(res.checkpoint, args.output, stage=res.stage)
    m = res.stage["metrics"]
    loss = ""
    if "calib_loss_pruned" in m:
        loss = (f"; calibration loss {m['calib_loss_dense']:.4f} dense, {m['calib_loss_pruned']:.4f} pruned, "
                f"{m['calib_loss']:.4f} after {m['recovery_seconds']:.0f} s of least-squares recovery")
    elif "calib_loss" in m:
        loss = f"; calibration loss {m['calib_loss_dense']:.4f} -> {m['calib_loss']:.4f}"
    print(f"wrote {out} ({m['params_total']:,} parameters in all){loss}")
    return 0


def _print_plan(plan: Any) -> None:
    what = "parameters" if plan.embeddings_counted else "non-embedding parameters"
    print(f"plan: {plan.params:,} of {plan.dense_params:,} {what} kept "
          f"({100 * plan.removed_fraction:.1f}% removed)")
    recovered = any(c.loss_pruned is not None for c in plan.candidates)
    head = ("calib loss pruned", "recovered", "recovery s") if recovered else ("calib loss",)
    rows = [("", "layers", "hidden", "ffn", "heads", "kv_heads", "params", *head)]
    rows.append(("dense", *plan.dense.as_dict().values(), f"{plan.dense_params:,}", *[""] * len(head)))
    for k, c in enumerate(plan.candidates):
        loss = f"{c.loss:.4f}" if c.loss is not None else "-"
        cells = ((f"{c.loss_pruned:.4f}", loss, f"{c.recover_seconds:.1f}") if c.loss_pruned is not None
                 else (loss, "-", "-")) if recovered else (loss,)
        rows.append(((">> " if k == 0 else "   ") + c.name, *c.shape.as_dict().values(), f"{c.params:,}", *cells))
    print_table(rows)
    sys.stdout.flush()


def _check_writable(out: Path) -> None:
    from compress.errors import SlimkitError

    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if out.exists() and not out.is_dir():
        raise SlimkitError(f"{out} exists and is not a directory: choose another -o")
    if not os.access(parent, os.W_OK):
        raise SlimkitError(f"cannot write under {parent}: choose another -o")
