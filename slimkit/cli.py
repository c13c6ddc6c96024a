"""slimkit command line: parse, call one verb, print. Bad input -> one line, exit code 2.

Each verb's flags are data in slimkit.commands (one module per group of verbs, with the functions
that turn parsed options into the verb's config and run it); this module only assembles them."""
from __future__ import annotations

import argparse
import errno
import sys

from slimkit.commands import add_flags

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    from slimkit import calibrate
    from slimkit.commands import export, prune, rationale, tools, train

    p = argparse.ArgumentParser(prog="slimkit", description="Compress small language models for devices.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("zoo", help="list the bundled models").set_defaults(func=tools.cmd_zoo)

    ex = sub.add_parser("export", help="export a checkpoint to an artifact").add_subparsers(dest="format", required=True)
    add_flags(ex.add_parser("gguf", help="write GGUF for llama.cpp (validated in llama.cpp by default)"),
              export.GGUF_FLAGS).set_defaults(func=export.cmd_export_gguf)
    calibrate.add_imatrix_parser(sub)
    add_flags(ex.add_parser("onnx", help="write an ONNX decoder with KV cache + genai_config.json (validated in "
                            "ONNX Runtime)"), export.ONNX_FLAGS).set_defaults(func=export.cmd_export_onnx)

    add_flags(sub.add_parser("eval", help="perplexity of a checkpoint, a .gguf or an ONNX export directory on a "
                             "text file"), tools.EVAL_FLAGS).set_defaults(func=tools.cmd_eval)

    pk = sub.add_parser("package", help="package an artifact for a runtime").add_subparsers(dest="runtime", required=True)
    add_flags(pk.add_parser("ollama", help="write an Ollama Modelfile package (and optionally install it)"),
              tools.OLLAMA_FLAGS).set_defaults(func=tools.cmd_package_ollama)

    add_flags(sub.add_parser("corpus", help="sample a training corpus from a teacher with llama.cpp (seeded, "
                             "resumable, deduplicated); use it as --data"),
              tools.CORPUS_FLAGS).set_defaults(func=tools.cmd_corpus)
    sub.add_parser("devices", help="list the device profiles (phones, boards, this host)").set_defaults(
        func=tools.cmd_devices)
    add_flags(sub.add_parser("profile", help="measure an artifact on a device, or predict for a device profile"),
              tools.PROFILE_FLAGS).set_defaults(func=tools.cmd_profile)

    add_flags(sub.add_parser("distill", help="distil one or more teachers into a student (runs under torchrun too)"),
              train.DISTILL_FLAGS).set_defaults(func=train.cmd_distill)
    add_flags(sub.add_parser("qat", help="quantization-aware distillation into exact GGUF blocks (runs under "
                             "torchrun too)"), train.QAT_FLAGS).set_defaults(func=train.cmd_qat)

    add_flags(sub.add_parser("run", help="run a recipe (default: the embedded default.yaml) into a run directory "
                             "with a report"), tools.RUN_FLAGS).set_defaults(func=tools.cmd_run)
    add_flags(sub.add_parser("prune", help="structured pruning (depth and width) to a parameter target or a shape"),
              prune.PRUNE_FLAGS).set_defaults(func=prune.cmd_prune)

    rat = sub.add_parser("rationale", help="rationale distillation: teacher rationales for a task, then training")
    rat_sub = rat.add_subparsers(dest="rationale_command", required=True)
    add_flags(rat_sub.add_parser("generate", help="teacher-forced rationales for a task into a resumable jsonl "
                                 "cache"), rationale.GENERATE_FLAGS).set_defaults(func=rationale.cmd_rationale_generate)
    add_flags(rat_sub.add_parser("train", help="multi-task rationale distillation: [answer] and "
                                 "[explain:<teacher>] prefixes"),
              rationale.TRAIN_FLAGS).set_defaults(func=rationale.cmd_rationale_train)
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
