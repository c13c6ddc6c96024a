"""`slimkit zoo | eval | package ollama | corpus | devices | profile | run`: flags and commands."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from slimkit.commands import flag, print_table

EVAL_FLAGS = (
    flag("source", help="HF directory, .gguf file or zoo name"),
    flag("--text", default=None, type=Path, help="UTF-8 text file (.gz accepted): perplexity"),
    flag("--task", default=None, help="cqa | svamp | esnli | task jsonl FILE: accuracy of the [answer] "
         "prompt (exact match; choice likelihood for multiple choice)"),
    flag("--split", default="test", help="task split (default test)"),
    flag("--limit", type=int, default=None, help="first N questions of the task"),
    flag("--ctx", type=int, default=512, help="window length in tokens (default 512)"),
    flag("--max-chunks", type=int, default=None, help="score at most N windows"),
    flag("--json", action="store_true", help="print the result as JSON"),
)

OLLAMA_FLAGS = (
    flag("model", type=Path, help="the .gguf file"),
    flag("--name", required=True, help="Ollama model name, e.g. smollm2-slim:q4"),
    flag("-o", "--output", required=True, type=Path, help="package directory"),
    flag("--num-ctx", type=int, default=None, help="PARAMETER num_ctx (default min(context, 4096))"),
    flag("--install", action="store_true", help="install into an Ollama model store"),
    flag("--models-dir", type=Path, default=None, help="Ollama models dir (default $OLLAMA_MODELS or ~/.ollama/models)"),
)

CORPUS_FLAGS = (
    flag("teacher"),
    flag("-o", "--output", type=Path, required=True),
    flag("--tokens", type=int, required=True, help="corpus size in teacher tokens"),
    flag("--max-tokens", type=int, default=256, help="tokens per document"),
    flag("--min-tokens", type=int, default=32, help="drop shorter documents"),
    flag("--temperature", type=float, default=1.0),
    flag("--top-p", type=float, default=1.0),
    flag("--top-k", type=int, default=0, help="0: sample from the whole vocabulary"),
    flag("--prompts", type=Path, default=None, help="one prompt per line, cycled (default: from BOS)"),
    flag("--seed", type=int, default=0),
    flag("--threads", type=int, default=None),
    flag("--sequences", type=int, default=32, help="documents decoded together in one llama.cpp batch (default 32)"),
)

PROFILE_FLAGS = (
    flag("artifact", help=".gguf file or ONNX model directory"),
    flag("--device", default="local", help="local | ssh://user@host[:port] | adb://SERIAL | PROFILE_NAME"),
    flag("--runtime", choices=["llama.cpp", "onnxruntime"], default=None, help="default: from the artifact"),
    flag("--ctx", type=int, default=512, help="context length for the KV cache and memory check"),
    flag("--threads", type=int, default=2, help="threads on the target (default 2)"),
    flag("--repetitions", type=int, default=5, help="timed repetitions per test"),
    flag("--identity", default=None, help="ssh private key file (default: your ssh config)"),
    flag("--python", default=None, help="python on the target (default python3)"),
    flag("--calibration", type=Path, default=None, help="calibration JSON for predictions"),
    flag("--timeout", type=float, default=900.0, help="seconds the run may take on the target"),
    flag("--env", action="append", default=[], metavar="KEY=VALUE",
         help="environment for the runner on the target, e.g. OMP_WAIT_POLICY=PASSIVE on a busy host"),
    flag("--json", action="store_true", help="print the full JSON record"),
)

RUN_FLAGS = (
    flag("recipe", nargs="?", default=None, help="recipe YAML file or embedded recipe name (default: default)"),
    flag("-o", "--output", type=Path, default=Path("runs/default"), help="run directory (default runs/default)"),
    flag("--set", action="append", default=[], metavar="STAGE.OPTION=VALUE",
         help="override a stage option, e.g. distill.tokens=200000 (repeatable)"),
    flag("--resume", action="store_true", help="continue a run: skip finished stages whose inputs and "
         "config are unchanged, continue interrupted training"),
    flag("--check", action="store_true", help="check the recipe (every stage against its verb) and stop"),
)


def profile_config(args: argparse.Namespace) -> Any:
    from slimkit.configs import ProfileConfig

    return ProfileConfig(runtime=args.runtime, ctx=args.ctx, threads=args.threads, repetitions=args.repetitions,
                         identity=args.identity, python=args.python,
                         calibration=str(args.calibration) if args.calibration else None, timeout=args.timeout,
                         env=tuple(args.env))


def cmd_zoo(args: argparse.Namespace) -> int:
    from compress import zoo

    rows = [("name", "family", "params", "shipped as", "license", "pip package")]
    rows += [(e.name, e.family, e.params, e.quant, e.license, e.package) for e in zoo.ZOO.values()]
    print_table(rows)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
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


def cmd_package_ollama(args: argparse.Namespace) -> int:
    from export import ollama

    kwargs = {}
    if args.num_ctx:
        kwargs["num_ctx"] = args.num_ctx
    pkg = ollama.write_package(args.model, args.name, args.output, **kwargs)
    print(f"wrote Ollama package {pkg.parent} ({pkg.name} + model)")
    if args.install:
        print(ollama.install(pkg, args.name, args.models_dir))
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from slimkit.corpus import CorpusConfig, write_corpus

    cfg = CorpusConfig(tokens=args.tokens, max_tokens=args.max_tokens, min_tokens=args.min_tokens,
                       temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                       prompts=str(args.prompts) if args.prompts else None, threads=args.threads,
                       sequences=args.sequences)
    write_corpus(args.teacher, args.output, cfg)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from devices.profile import device_rows

    print_table(device_rows())
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from devices.profile import render
    from slimkit.verbs import profile

    result = profile(args.artifact, args.device, profile_config(args))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
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
