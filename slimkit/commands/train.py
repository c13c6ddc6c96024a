"""`slimkit distill` and `slimkit qat`: flags, DistillConfig / QATConfig from them, the commands."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from compress.quant.plans import PRESETS
from slimkit.calibrate import calib_flags
from slimkit.commands import flag

TRAINING_FLAGS = (   # the flags `slimkit distill` and `slimkit qat` share
    flag("--teacher", action="append", default=[], help="teacher source (repeat for several)"),
    flag("--teacher-weight", type=float, nargs="+", default=None, help="one weight per teacher (default 1/n)"),
    flag("--teacher-quantize", choices=["nf4"], default=None, help="load teachers 4-bit NF4 (bitsandbytes)"),
    flag("-o", "--output", required=True, type=Path, help="output checkpoint directory"),
    flag("--data", type=Path, nargs="+", default=[], help="text (.gz), jsonl text or chat jsonl files; "
         "none = sample a corpus from the first teacher"),
    flag("--tokens", type=int, required=True, help="training budget in tokens"),
    flag("--loss", choices=["fkl", "rkl", "jsd", "tv"], default="fkl", help="logit loss (default fkl)"),
    flag("--beta", type=float, default=0.5, help="generalized JSD beta (default 0.5)"),
    flag("--temperature", type=float, default=1.0, help="softmax temperature (default 1)"),
    flag("--feature-loss", choices=["mse", "cosine"], default="mse"),
    flag("--feature-weight", type=float, default=0.0, help="hidden-state loss weight (default 0)"),
    flag("--relation-weight", type=float, default=0.0, help="attention/value relation weight (default 0)"),
    flag("--layer-map", default="uniform", help="'uniform' or STUDENT:TEACHER pairs, e.g. 2:4,4:8"),
    flag("--ce-weight", type=float, default=0.0, help="cross-entropy on the data (alone without teachers)"),
    flag("--logit-cache", type=Path, default=None, help="offline teacher-logit cache directory"),
    flag("--top-k", type=int, default=64, help="logits kept per token in the cache (default 64)"),
    flag("--blockwise-tokens", type=int, default=0, metavar="N", help="first train each block of a "
         "pruned student to map the teacher's hidden states across the blocks it replaces (N tokens)"),
    flag("--sampled-logits", type=int, default=0, metavar="K", help="cache K tokens drawn from the teacher "
         "per token instead of the top-k (an unbiased KL estimate; forward KL only; 2k+2 = equal bytes)"),
    flag("--seq-len", type=int, default=512),
    flag("--batch-size", type=int, default=8, help="windows per optimizer step over all ranks"),
    flag("--micro-batch", type=int, default=1, help="windows per forward pass on one rank"),
    flag("--lr", type=float, default=1e-4),
    flag("--eval-every", type=int, default=0, help="evaluate every N steps (0 = at the end)"),
    flag("--save-every", type=int, default=0, help="checkpoint every N steps (0 = never)"),
    flag("--precision", choices=["auto", "fp32", "bf16"], default="auto",
         help="auto (default): bf16 autocast on CUDA with bf16 and on CPUs with native bf16 (AVX-512 BF16, AMX), "
              "else fp32"),
    flag("--head-chunk", type=int, default=0, metavar="N", help="output head and logit losses N positions at a "
         "time, recomputed in the backward (less memory; 0 = the whole window)"),
    flag("--seed", type=int, default=0),
    flag("--data-free-tokens", type=int, default=None, help="size of the sampled corpus without --data"),
    flag("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT.state"),
)

DISTILL_FLAGS = (flag("student", help="HF directory, .gguf file or zoo name"), *TRAINING_FLAGS)

QAT_FLAGS = (
    flag("student", metavar="SOURCE", help="HF directory, .gguf file or zoo name"),
    flag("--plan", default="q4_0", choices=sorted(PRESETS), help="type mix (default q4_0: Q4_0, "
         "embedding/output Q8_0)"),
    flag("--type-rule", action="append", default=[], metavar="PATTERN=TYPE",
         help="override the plan for module names matching PATTERN (fnmatch), e.g. "
              "'model.layers.*.mlp.down_proj=Q8_0'; repeatable, first match wins"),
    flag("--learn-scales", action="store_true", help="train the block scales too (LSQ); exported exactly"),
    flag("--no-teacher", action="store_true", help="plain QAT on --data with cross-entropy (default "
         "teacher: SOURCE itself in full precision)"),
    *calib_flags(name="--init"),
    *TRAINING_FLAGS,
)


def distill_config(args: argparse.Namespace) -> Any:
    from compress.distill.config import DistillConfig

    return DistillConfig(tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size,
                         micro_batch=args.micro_batch, lr=args.lr, ce_weight=args.ce_weight,
                         eval_every=args.eval_every, save_every=args.save_every, precision=args.precision,
                         seed=args.seed, logit_cache=str(args.logit_cache) if args.logit_cache else None,
                         top_k=args.top_k, sampled_logits=args.sampled_logits,
                         blockwise_tokens=args.blockwise_tokens, data_free_tokens=args.data_free_tokens,
                         head_chunk=args.head_chunk)


def teacher_specs(args: argparse.Namespace) -> list[Any]:
    from compress.distill.teachers import make_specs

    return make_specs(args.teacher, args.teacher_weight, loss=args.loss, beta=args.beta,
                      temperature=args.temperature, feature_loss=args.feature_loss,
                      feature_weight=args.feature_weight, relation_weight=args.relation_weight,
                      layer_map=args.layer_map, quantize=args.teacher_quantize)


def qat_plan(args: argparse.Namespace) -> Any:
    from compress.quant.plans import QATPlan

    return QATPlan.parse_rules(args.plan, args.type_rule, args.learn_scales,
                               init=args.method or ("gptq+imatrix" if args.calib else "rtn"),
                               calib=tuple(str(p) for p in args.calib or ()), calib_tokens=args.calib_tokens,
                               calib_seq_len=args.calib_seq_len, damp=args.gptq_damp,
                               sequential=not args.gptq_one_pass)


def qat_config(args: argparse.Namespace) -> Any:
    from slimkit.configs import QATConfig

    return QATConfig(distill_config(args), qat_plan(args), self_distill=not args.no_teacher)


def cmd_distill(args: argparse.Namespace, qat: Any = None) -> int:
    from compress.distill.trainer import distill

    specs = teacher_specs(args)
    res = distill(args.student, specs, args.output, distill_config(args), data=args.data, resume=args.resume,
                  qat=qat)
    if res.main_rank:
        final = res.evals[-1]
        print(f"wrote {res.out} after {res.steps} steps ({res.tokens} tokens, {res.tokens_per_s:.0f} tokens/s); "
              f"held-out ppl {final['heldout_ppl']:.3f}"
              + (f", KL to teacher {final['kl_to_teacher']:.4f}, top-1 agreement {final['top1_agreement']:.3f}"
                 if "kl_to_teacher" in final else ""))
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    from compress.errors import SlimkitError

    plan = qat_plan(args)
    if args.no_teacher:
        if args.teacher:
            raise SlimkitError("--no-teacher and --teacher exclude each other")
        if args.ce_weight <= 0 or not args.data:
            raise SlimkitError("--no-teacher trains on the data alone: give --data FILE and --ce-weight 1")
    elif not args.teacher:
        args.teacher = [args.student]  # quantization-aware self-distillation from the full-precision source
    return cmd_distill(args, qat=plan)
