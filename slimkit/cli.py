"""slimkit command line: parse, call one verb, print. Bad input -> one line, exit code 2."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _cmd_zoo(args: argparse.Namespace) -> int:
    from compress import zoo

    rows = [("name", "family", "params", "shipped as", "license", "pip package")]
    rows += [(e.name, e.family, e.params, e.quant, e.license, e.package) for e in zoo.ZOO.values()]
    _print_table(rows)
    return 0


def _cmd_export_gguf(args: argparse.Namespace) -> int:
    from slimkit.calibrate import gguf_config
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


def _cmd_eval(args: argparse.Namespace) -> int:
    from compress.errors import SlimkitError
    from slimkit.evaluation import evaluate_source

    if (args.text is None) == (args.task is None):
        raise SlimkitError("give --text FILE (perplexity) or --task cqa|svamp|esnli|FILE (accuracy)")
    if args.task is not None:
        return _eval_task(args)
    result = evaluate_source(args.source, args.text, ctx=args.ctx, max_chunks=args.max_chunks, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['source']}: perplexity {result['ppl']:.4f} over {result['tokens_scored']} tokens "
              f"({result['windows']} windows of {result['ctx']}, runtime {result['runtime']})")
    return 0


def _eval_task(args: argparse.Namespace) -> int:
    from compress.checkpoint import load
    from compress.rationale.evaluate import evaluate_task
    from compress.rationale.tasks import load_task

    task = load_task(args.task, args.split, limit=args.limit)
    model, tokenizer = load(args.source)
    result = {"source": args.source, "task": args.task, "split": args.split,
              **evaluate_task(model, tokenizer, task.records, progress=not args.json)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.source} on {args.task} ({args.split}, {result['n']} questions): exact match "
              f"{result['exact_match']:.4f}" + (f", choice accuracy {result['choice_accuracy']:.4f}"
                                                if "choice_accuracy" in result else ""))
    return 0


def _cmd_rationale_train(args: argparse.Namespace) -> int:
    from compress.distill.config import DistillConfig
    from compress.errors import SlimkitError
    from compress.rationale.generate import load_rationales
    from compress.rationale.tasks import load_task
    from compress.rationale.train import train_rationale

    if args.alpha and len(args.alpha) != len(args.teacher_name):
        raise SlimkitError(f"give one --alpha per --teacher-name ({len(args.teacher_name)}), got {len(args.alpha)}")
    alphas = dict(zip(args.teacher_name, args.alpha or [1.0] * len(args.teacher_name)))
    task = load_task(args.task, args.split, limit=args.limit)
    rationales: dict[str, dict[str, str]] = {}
    for path in args.rationales:
        for rid, by_teacher in load_rationales(path).items():
            rationales.setdefault(rid, {}).update(by_teacher)
    cfg = DistillConfig(tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size,
                        micro_batch=args.micro_batch, lr=args.lr, eval_every=args.eval_every,
                        save_every=args.save_every, precision=args.precision, seed=args.seed)
    res = train_rationale(args.student, task.records, rationales, alphas, args.output, cfg, resume=args.resume)
    print(f"wrote {res.out} after {res.steps} steps ({res.tokens} tokens); held-out answer ppl "
          f"{res.evals[-1]['heldout_ppl']:.3f}")
    return 0


def _cmd_package_ollama(args: argparse.Namespace) -> int:
    from export import ollama

    kwargs = {}
    if args.num_ctx:
        kwargs["num_ctx"] = args.num_ctx
    pkg = ollama.write_package(args.model, args.name, args.output, **kwargs)
    print(f"wrote Ollama package {pkg.parent} ({pkg.name} + model)")
    if args.install:
        print(ollama.install(pkg, args.name, args.models_dir))
    return 0


def _cmd_corpus(args: argparse.Namespace) -> int:
    from slimkit.corpus import CorpusConfig, write_corpus

    cfg = CorpusConfig(tokens=args.tokens, max_tokens=args.max_tokens, min_tokens=args.min_tokens,
                       temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                       prompts=str(args.prompts) if args.prompts else None, threads=args.threads)
    write_corpus(args.teacher, args.output, cfg)
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from devices.profile import device_rows

    _print_table(device_rows())
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from devices.profile import render
    from slimkit.configs import ProfileConfig
    from slimkit.verbs import profile

    cfg = ProfileConfig(runtime=args.runtime, ctx=args.ctx, threads=args.threads, repetitions=args.repetitions,
                        identity=args.identity, python=args.python,
                        calibration=str(args.calibration) if args.calibration else None, timeout=args.timeout,
                        env=tuple(args.env))
    result = profile(args.artifact, args.device, cfg)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def _cmd_distill(args: argparse.Namespace, qat=None) -> int:
    from compress.distill.config import DistillConfig
    from compress.distill.teachers import make_specs
    from compress.distill.trainer import distill

    specs = make_specs(args.teacher, args.teacher_weight, loss=args.loss, beta=args.beta,
                       temperature=args.temperature, feature_loss=args.feature_loss,
                       feature_weight=args.feature_weight, relation_weight=args.relation_weight,
                       layer_map=args.layer_map, quantize=args.teacher_quantize)
    cfg = DistillConfig(tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size,
                        micro_batch=args.micro_batch, lr=args.lr, ce_weight=args.ce_weight,
                        eval_every=args.eval_every, save_every=args.save_every, precision=args.precision,
                        seed=args.seed, logit_cache=str(args.logit_cache) if args.logit_cache else None,
                        top_k=args.top_k, sampled_logits=args.sampled_logits,
                        blockwise_tokens=args.blockwise_tokens,
                        data_free_tokens=args.data_free_tokens)
    res = distill(args.student, specs, args.output, cfg, data=args.data, resume=args.resume, qat=qat)
    if res.main_rank:
        final = res.evals[-1]
        print(f"wrote {res.out} after {res.steps} steps ({res.tokens} tokens, {res.tokens_per_s:.0f} tokens/s); "
              f"held-out ppl {final['heldout_ppl']:.3f}"
              + (f", KL to teacher {final['kl_to_teacher']:.4f}, top-1 agreement {final['top1_agreement']:.3f}"
                 if "kl_to_teacher" in final else ""))
    return 0


def _cmd_qat(args: argparse.Namespace) -> int:
    from compress.errors import SlimkitError
    from compress.quant.plans import QATPlan

    plan = QATPlan.parse_rules(args.plan, args.type_rule, args.learn_scales,
                               init=args.method or ("gptq+imatrix" if args.calib else "rtn"),
                               calib=tuple(str(p) for p in args.calib or ()), calib_tokens=args.calib_tokens,
                               calib_seq_len=args.calib_seq_len, damp=args.gptq_damp,
                               sequential=not args.gptq_one_pass)
    if args.no_teacher:
        if args.teacher:
            raise SlimkitError("--no-teacher and --teacher exclude each other")
        if args.ce_weight <= 0 or not args.data:
            raise SlimkitError("--no-teacher trains on the data alone: give --data FILE and --ce-weight 1")
    elif not args.teacher:
        args.teacher = [args.student]  # quantization-aware self-distillation from the full-precision source
    return _cmd_distill(args, qat=plan)


def _cmd_run(args: argparse.Namespace) -> int:
    from slimkit.pipeline import check_recipe, load_recipe, run
    from slimkit.report import write_report

    recipe = load_recipe(args.recipe, args.set)
    if args.check:
        check_recipe(recipe)
        print(f"{recipe.path}: {len(recipe.stages)} stages, every one valid for its verb")
        return 0
    run(recipe, args.output, resume=args.resume)
    md, page = write_report(args.output)
    print(md.read_text())
    print(f"report: {md} and {page}")
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from slimkit.configs import OnnxConfig
    from slimkit.verbs import export_onnx

    res = export_onnx(args.source, OnnxConfig(args.precision, args.block_size, not args.no_validate), args.output)
    print(f"wrote {res.path} (ONNX {res.precision}, {res.file_mb:.1f} MB) in {res.seconds:.1f} s")
    if res.validation:
        v, kv, g = res.validation, res.validation["kv_cache"], res.validation["greedy"]
        print(f"validated in ONNX Runtime on {v['n_tokens']} tokens: tokenizer identical, max |dlogit| "
              f"{v['max_abs_diff']:.3g}" + (f" (tolerance {v['tolerance']:.3g})" if "tolerance" in v else "")
              + f", top-1 agreement {v['top1_agreement']:.3f}, mean KL {v['mean_kl']:.3g}; KV cache vs full "
              f"recomputation {kv['max_abs_diff']:.3g} (tolerance {kv['tolerance']:.3g}); greedy {g['tokens']} "
              f"tokens {'identical to' if g['identical'] else 'differ from'} torch")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from compress.checkpoint import save
    from compress.prune import PruneConfig, prune

    shape = {k: getattr(args, k) for k in ("layers", "hidden", "ffn", "heads", "kv_heads") if getattr(args, k)}
    cfg = PruneConfig(method=args.method, target_params=args.target_params, shape=shape,
                      count_embeddings=args.count_embeddings, calib=str(args.calib) if args.calib else None,
                      calib_tokens=args.calib_tokens, calib_ctx=args.calib_ctx, align=args.align,
                      depth_metric=args.depth_metric, seed=args.seed, recover=args.recover,
                      recover_tokens=args.recover_tokens, bridge=args.bridge, recover_target=args.recover_target,
                      **({} if args.recover_damp is None else {"recover_damp": args.recover_damp}))
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


def _print_plan(plan) -> None:
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
    _print_table(rows)
    sys.stdout.flush()


def _count(text: str) -> float:
    """A ratio (0.75) or a count with an optional K/M/B suffix (70M)."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9}.get(text[-1:].lower(), 1)
    try:
        return float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio like 0.75 or a count like 70M, got {text!r}") from None


def _check_writable(out: Path) -> None:
    from compress.errors import SlimkitError

    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if out.exists() and not out.is_dir():
        raise SlimkitError(f"{out} exists and is not a directory: choose another -o")
    if not os.access(parent, os.W_OK):
        raise SlimkitError(f"cannot write under {parent}: choose another -o")


def _cmd_rationale_generate(args: argparse.Namespace) -> int:
    from compress.rationale.generate import generate_for_task

    data, rep = generate_for_task(
        args.task, args.teacher, args.output, split=args.split, limit=args.limit, model=args.model, name=args.name,
        k_shot=args.k_shot, concurrency=args.concurrency, max_tokens=args.max_tokens, temperature=args.temperature,
        seed=args.seed, template=args.template, timeout=args.timeout, retries=args.retries,
        api_key_env=args.api_key_env, example_teacher=args.examples_teacher, chat=False if args.completion else None)
    if data.problems:
        print(f"{len(data.problems)} task records have problems (first: {data.problems[0]})", file=sys.stderr)
    c = rep.counts()
    print(f"wrote {rep.out}: {c['generated']} generated, {c['skipped_cached']} already there, "
          f"{c['inconsistent']} inconsistent with the gold answer, {c['failed']} failed, {c['empty']} without "
          "an explanation" + (" (rerun to retry them)" if rep.failed or rep.empty else ""))
    return 0


def _print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _add_training_args(s: argparse.ArgumentParser) -> None:
    """The flags `slimkit distill` and `slimkit qat` share."""
    s.add_argument("--teacher", action="append", default=[], help="teacher source (repeat for several)")
    s.add_argument("--teacher-weight", type=float, nargs="+", default=None, help="one weight per teacher (default 1/n)")
    s.add_argument("--teacher-quantize", choices=["nf4"], default=None, help="load teachers 4-bit NF4 (bitsandbytes)")
    s.add_argument("-o", "--output", required=True, type=Path, help="output checkpoint directory")
    s.add_argument("--data", type=Path, nargs="+", default=[], help="text (.gz), jsonl text or chat jsonl files; "
                   "none = sample a corpus from the first teacher")
    s.add_argument("--tokens", type=int, required=True, help="training budget in tokens")
    s.add_argument("--loss", choices=["fkl", "rkl", "jsd", "tv"], default="fkl", help="logit loss (default fkl)")
    s.add_argument("--beta", type=float, default=0.5, help="generalized JSD beta (default 0.5)")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    s.add_argument("--feature-loss", choices=["mse", "cosine"], default="mse")
    s.add_argument("--feature-weight", type=float, default=0.0, help="hidden-state loss weight (default 0)")
    s.add_argument("--relation-weight", type=float, default=0.0, help="attention/value relation weight (default 0)")
    s.add_argument("--layer-map", default="uniform", help="'uniform' or STUDENT:TEACHER pairs, e.g. 2:4,4:8")
    s.add_argument("--ce-weight", type=float, default=0.0, help="cross-entropy on the data (alone without teachers)")
    s.add_argument("--logit-cache", type=Path, default=None, help="offline teacher-logit cache directory")
    s.add_argument("--top-k", type=int, default=64, help="logits kept per token in the cache (default 64)")
    s.add_argument("--blockwise-tokens", type=int, default=0, metavar="N", help="first train each block of a "
                   "pruned student to map the teacher's hidden states across the blocks it replaces (N tokens)")
    s.add_argument("--sampled-logits", type=int, default=0, metavar="K", help="cache K tokens drawn from the teacher "
                   "per token instead of the top-k (an unbiased KL estimate; forward KL only; 2k+2 = equal bytes)")
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument("--batch-size", type=int, default=8, help="windows per optimizer step over all ranks")
    s.add_argument("--micro-batch", type=int, default=1, help="windows per forward pass on one rank")
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0 = at the end)")
    s.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0 = never)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-free-tokens", type=int, default=None, help="size of the sampled corpus without --data")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT.state")


def build_parser() -> argparse.ArgumentParser:
    from compress.quant.plans import PRESETS
    from export.gguf.types import ALL_TYPES

    p = argparse.ArgumentParser(prog="slimkit", description="Compress small language models for devices.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("zoo", help="list the bundled models")
    s.set_defaults(func=_cmd_zoo)

    ex = sub.add_parser("export", help="export a checkpoint to an artifact").add_subparsers(dest="format", required=True)
    s = ex.add_parser("gguf", help="write GGUF for llama.cpp (validated in llama.cpp by default)")
    s.add_argument("source", help="HF directory, .gguf file or zoo name")
    s.add_argument("-o", "--output", required=True, type=Path, help="output .gguf file")
    s.add_argument("--type", default=None, metavar="TYPE", help=f"tensor type: {', '.join(ALL_TYPES)} (default: "
                   "the blocks a `slimkit qat` checkpoint trained, else F16)")
    s.add_argument("--no-validate", action="store_true", help="skip the llama.cpp parity check")
    s.add_argument("--imatrix", type=Path, default=None, metavar="FILE",
                   help="importance matrix (GGUF or legacy .dat, from `slimkit imatrix` or llama-imatrix)")
    from slimkit.calibrate import add_calib_args, add_imatrix_parser

    add_calib_args(s)
    s.set_defaults(func=_cmd_export_gguf)
    add_imatrix_parser(sub)
    s = ex.add_parser("onnx", help="write an ONNX decoder with KV cache + genai_config.json (validated in ONNX Runtime)")
    s.add_argument("source", help="HF directory, .gguf file or zoo name")
    s.add_argument("-o", "--output", required=True, type=Path, help="output directory")
    s.add_argument("--precision", default="fp32", metavar="P", help="fp32 | fp16 | int8 | int4 (int8/int4: MatMulNBits weights)")
    s.add_argument("--block-size", type=int, default=None, help="int8/int4 quantization block size (default 32)")
    s.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime parity checks")
    s.set_defaults(func=_cmd_export_onnx)

    s = sub.add_parser("eval", help="perplexity of a checkpoint, a .gguf or an ONNX export directory on a text file")
    s.add_argument("source", help="HF directory, .gguf file or zoo name")
    s.add_argument("--text", default=None, type=Path, help="UTF-8 text file (.gz accepted): perplexity")
    s.add_argument("--task", default=None, help="cqa | svamp | esnli | task jsonl FILE: accuracy of the [answer] "
                   "prompt (exact match; choice likelihood for multiple choice)")
    s.add_argument("--split", default="test", help="task split (default test)")
    s.add_argument("--limit", type=int, default=None, help="first N questions of the task")
    s.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    s.add_argument("--max-chunks", type=int, default=None, help="score at most N windows")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=_cmd_eval)

    pk = sub.add_parser("package", help="package an artifact for a runtime").add_subparsers(dest="runtime", required=True)
    s = pk.add_parser("ollama", help="write an Ollama Modelfile package (and optionally install it)")
    s.add_argument("model", type=Path, help="the .gguf file")
    s.add_argument("--name", required=True, help="Ollama model name, e.g. smollm2-slim:q4")
    s.add_argument("-o", "--output", required=True, type=Path, help="package directory")
    s.add_argument("--num-ctx", type=int, default=None, help="PARAMETER num_ctx (default min(context, 4096))")
    s.add_argument("--install", action="store_true", help="install into an Ollama model store")
    s.add_argument("--models-dir", type=Path, default=None, help="Ollama models dir (default $OLLAMA_MODELS or ~/.ollama/models)")
    s.set_defaults(func=_cmd_package_ollama)

    s = sub.add_parser("corpus", help="sample a training corpus from a teacher with llama.cpp (seeded, resumable, "
                       "deduplicated); use it as --data")
    s.add_argument("teacher")
    s.add_argument("-o", "--output", type=Path, required=True)
    s.add_argument("--tokens", type=int, required=True, help="corpus size in teacher tokens")
    s.add_argument("--max-tokens", type=int, default=256, help="tokens per document")
    s.add_argument("--min-tokens", type=int, default=32, help="drop shorter documents")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0, help="0: sample from the whole vocabulary")
    s.add_argument("--prompts", type=Path, default=None, help="one prompt per line, cycled (default: from BOS)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=_cmd_corpus)

    s = sub.add_parser("devices", help="list the device profiles (phones, boards, this host)")
    s.set_defaults(func=_cmd_devices)

    s = sub.add_parser("profile", help="measure an artifact on a device, or predict for a device profile")
    s.add_argument("artifact", help=".gguf file or ONNX model directory")
    s.add_argument("--device", default="local", help="local | ssh://user@host[:port] | adb://SERIAL | PROFILE_NAME")
    s.add_argument("--runtime", choices=["llama.cpp", "onnxruntime"], default=None, help="default: from the artifact")
    s.add_argument("--ctx", type=int, default=512, help="context length for the KV cache and memory check")
    s.add_argument("--threads", type=int, default=2, help="threads on the target (default 2)")
    s.add_argument("--repetitions", type=int, default=5, help="timed repetitions per test")
    s.add_argument("--identity", default=None, help="ssh private key file (default: your ssh config)")
    s.add_argument("--python", default=None, help="python on the target (default python3)")
    s.add_argument("--calibration", type=Path, default=None, help="calibration JSON for predictions")
    s.add_argument("--timeout", type=float, default=900.0, help="seconds the run may take on the target")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the runner on the target, e.g. OMP_WAIT_POLICY=PASSIVE on a busy host")
    s.add_argument("--json", action="store_true", help="print the full JSON record")
    s.set_defaults(func=_cmd_profile)

    s = sub.add_parser("distill", help="distil one or more teachers into a student (runs under torchrun too)")
    s.add_argument("student", help="HF directory, .gguf file or zoo name")
    _add_training_args(s)
    s.set_defaults(func=_cmd_distill)

    s = sub.add_parser("qat", help="quantization-aware distillation into exact GGUF blocks (runs under torchrun too)")
    s.add_argument("student", metavar="SOURCE", help="HF directory, .gguf file or zoo name")
    s.add_argument("--plan", default="q4_0", choices=sorted(PRESETS), help="type mix (default q4_0: Q4_0, "
                   "embedding/output Q8_0)")
    s.add_argument("--type-rule", action="append", default=[], metavar="PATTERN=TYPE",
                   help="override the plan for module names matching PATTERN (fnmatch), e.g. "
                   "'model.layers.*.mlp.down_proj=Q8_0'; repeatable, first match wins")
    s.add_argument("--learn-scales", action="store_true", help="train the block scales too (LSQ); exported exactly")
    s.add_argument("--no-teacher", action="store_true", help="plain QAT on --data with cross-entropy (default "
                   "teacher: SOURCE itself in full precision)")
    add_calib_args(s, flag="--init")
    _add_training_args(s)
    s.set_defaults(func=_cmd_qat)


    s = sub.add_parser("run", help="run a recipe (default: the embedded default.yaml) into a run directory with a report")
    s.add_argument("recipe", nargs="?", default=None, help="recipe YAML file or embedded recipe name (default: default)")
    s.add_argument("-o", "--output", type=Path, default=Path("runs/default"), help="run directory (default runs/default)")
    s.add_argument("--set", action="append", default=[], metavar="STAGE.OPTION=VALUE",
                   help="override a stage option, e.g. distill.tokens=200000 (repeatable)")
    s.add_argument("--resume", action="store_true", help="continue a run: skip finished stages whose inputs and "
                   "config are unchanged, continue interrupted training")
    s.add_argument("--check", action="store_true", help="check the recipe (every stage against its verb) and stop")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("prune", help="structured pruning (depth and width) to a parameter target or a shape")
    s.add_argument("source", help="HF directory, .gguf file or zoo name")
    s.add_argument("-o", "--output", required=True, type=Path, help="output HF checkpoint directory")
    s.add_argument("--target-params", type=_count, default=None, metavar="N|RATIO",
                   help="parameters to keep: a ratio in (0,1] of the model's or an absolute count "
                        "(non-embedding unless --count-embeddings)")
    for dim, what in (("layers", "decoder blocks"), ("hidden", "hidden width"), ("ffn", "FFN width"),
                      ("heads", "query heads"), ("kv-heads", "KV heads (groups)")):
        s.add_argument(f"--{dim}", type=int, default=None, help=f"explicit shape: {what}")
    s.add_argument("--method", default="minitron", choices=["minitron", "taylor", "magnitude", "random", "block-influence"],
                   help="importance: calibration activations (minitron), first-order Taylor, weight magnitude, "
                        "random; block-influence removes whole blocks only")
    s.add_argument("--calib", type=Path, default=None, help="calibration text (.txt or .gz); needed by minitron, "
                   "taylor, block-influence, and by the shape search")
    s.add_argument("--calib-tokens", type=int, default=16384, help="calibration tokens (default 16384)")
    s.add_argument("--calib-ctx", type=int, default=512, help="calibration window length (default 512)")
    s.add_argument("--align", type=int, default=32, help="round pruned widths to multiples of N (32 suits Q4_0/Q8_0 "
                   "blocks, 256 K-quant rows; 1 turns it off)")
    s.add_argument("--count-embeddings", action="store_true", help="--target-params counts embeddings too")
    s.add_argument("--depth-metric", default="influence", choices=["influence", "ppl"],
                   help="rank blocks by block influence (ShortGPT) or by the loss increase when dropped")
    s.add_argument("--seed", type=int, default=0, help="seed of the random method")
    s.add_argument("--recover", choices=["ls", "none"], default=None, help="repair the pruned model from calibration "
                   "activations: least-squares refits of pruned layers and linear bridges over removed blocks "
                   "(default: ls when --calib is given)")
    s.add_argument("--recover-tokens", type=int, default=None, help="calibration tokens the recovery fits on "
                   "(default 8192, at most --calib-tokens)")
    s.add_argument("--recover-damp", type=float, default=None, help="ridge toward the pruned weights, relative "
                   "to the mean diagonal of X^T X (default: compress.prune.recover.DEFAULT_DAMP, 0.1)")
    s.add_argument("--bridge", choices=["ls", "cosine"], default="ls", help="objective of the linear bridges over "
                   "removed blocks (ReplaceMe): least squares or cosine distance")
    s.add_argument("--recover-target", choices=["local", "dense"], default="local", help="what the refits match: "
                   "the dense modules run on the pruned model's own activations (local), or the dense model's outputs")
    s.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    s.set_defaults(func=_cmd_prune)

    rat = sub.add_parser("rationale", help="rationale distillation: teacher rationales for a task, then training")
    rat_sub = rat.add_subparsers(dest="rationale_command", required=True)
    s = rat_sub.add_parser("generate", help="teacher-forced rationales for a task into a resumable jsonl cache")
    s.add_argument("--task", required=True, help="cqa | svamp | esnli | a task jsonl file (schema: README)")
    s.add_argument("--split", default="train", help="split of a bundled task (default train)")
    s.add_argument("--limit", type=int, default=None, help="only the first N records")
    s.add_argument("--teacher", required=True, help="file:NAME | MODEL.gguf | zoo name | http(s)://HOST/v1#MODEL")
    s.add_argument("--model", default=None, help="model name at an HTTP teacher (instead of URL#MODEL)")
    s.add_argument("--name", default=None, help="teacher name in the output (default: the model's)")
    s.add_argument("--k-shot", type=int, default=4, help="in-context examples per prompt (default 4)")
    s.add_argument("--examples-teacher", default="palm", help="rationales shown in the examples (default palm)")
    s.add_argument("--template", type=Path, default=None, help="YAML/JSON overriding prompt template parts")
    s.add_argument("--concurrency", type=int, default=4, help="requests in flight for an HTTP teacher (default 4)")
    s.add_argument("--max-tokens", type=int, default=128)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--seed", type=int, default=0, help="seed of the example draw and of sampling")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)")
    s.add_argument("--retries", type=int, default=2, help="retries of a failed request (default 2)")
    s.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    s.add_argument("--completion", action="store_true", help="send the prompt as plain text (completions) instead "
                   "of chat messages (default: chat, except for a GGUF without a chat template)")
    s.add_argument("-o", "--output", required=True, type=Path, help="rationale jsonl (appended; reruns resume)")
    s.set_defaults(func=_cmd_rationale_generate)
    s = rat_sub.add_parser("train", help="multi-task rationale distillation: [answer] and [explain:<teacher>] prefixes")
    s.add_argument("student", help="HF directory, .gguf file or zoo name")
    s.add_argument("--task", required=True, help="cqa | svamp | esnli | task jsonl FILE")
    s.add_argument("--split", default="train")
    s.add_argument("--limit", type=int, default=None, help="first N training records")
    s.add_argument("--rationales", type=Path, nargs="*", default=[], help="`slimkit rationale generate` outputs "
                   "(consistent rationales only); the task file's own rationales (palm) are used too")
    s.add_argument("--teacher-name", nargs="*", default=[], help="teachers whose rationales the student learns "
                   "(none = label only), e.g. palm gemma3")
    s.add_argument("--alpha", type=float, nargs="*", default=None, help="one weight per --teacher-name (default 1)")
    s.add_argument("-o", "--output", required=True, type=Path, help="output checkpoint directory")
    s.add_argument("--tokens", type=int, required=True, help="training budget in tokens (padded windows)")
    s.add_argument("--seq-len", type=int, default=256)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--micro-batch", type=int, default=1)
    s.add_argument("--lr", type=float, default=5e-5)
    s.add_argument("--eval-every", type=int, default=0)
    s.add_argument("--save-every", type=int, default=0)
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", action="store_true")
    s.set_defaults(func=_cmd_rationale_train)

    return p


def main(argv: list[str] | None = None) -> int:
    from compress.errors import SlimkitError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SlimkitError as exc:
        if args.debug:
            raise
        print(f"slimkit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if args.debug:
            raise
        hint = " (disk full: free space or choose another output directory)" if exc.errno == errno.ENOSPC else ""
        print(f"slimkit: error: {exc.strerror or exc}: {exc.filename or ''}{hint}".rstrip(": "), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("slimkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
