"""`slimkit rationale generate | train`: flags and commands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from slimkit.commands import flag

GENERATE_FLAGS = (
    flag("--task", required=True, help="cqa | svamp | esnli | a task jsonl file (schema: README)"),
    flag("--split", default="train", help="split of a bundled task (default train)"),
    flag("--limit", type=int, default=None, help="only the first N records"),
    flag("--teacher", required=True, help="file:NAME | MODEL.gguf | zoo name | http(s)://HOST/v1#MODEL"),
    flag("--model", default=None, help="model name at an HTTP teacher (instead of URL#MODEL)"),
    flag("--name", default=None, help="teacher name in the output (default: the model's)"),
    flag("--k-shot", type=int, default=4, help="in-context examples per prompt (default 4)"),
    flag("--examples-teacher", default="palm", help="rationales shown in the examples (default palm)"),
    flag("--template", type=Path, default=None, help="YAML/JSON overriding prompt template parts"),
    flag("--concurrency", type=int, default=4, help="requests in flight for an HTTP teacher (default 4)"),
    flag("--max-tokens", type=int, default=128),
    flag("--temperature", type=float, default=0.0, help="0 = greedy (default)"),
    flag("--seed", type=int, default=0, help="seed of the example draw and of sampling"),
    flag("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)"),
    flag("--retries", type=int, default=2, help="retries of a failed request (default 2)"),
    flag("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key"),
    flag("--completion", action="store_true", help="send the prompt as plain text (completions) instead "
         "of chat messages (default: chat, except for a GGUF without a chat template)"),
    flag("--answer-format", choices=["letter", "text"], default="letter", help="choices and answers shown to "
         "the teacher as '(d) math problem' (letter, default) or by their words (text): the student's format"),
    flag("-o", "--output", required=True, type=Path, help="rationale jsonl (appended; reruns resume)"),
)

TRAIN_FLAGS = (
    flag("student", help="HF directory, .gguf file or zoo name"),
    flag("--task", required=True, help="cqa | svamp | esnli | task jsonl FILE"),
    flag("--split", default="train"),
    flag("--limit", type=int, default=None, help="first N training records"),
    flag("--rationales", type=Path, nargs="*", default=[], help="`slimkit rationale generate` outputs "
         "(consistent rationales only); the task file's own rationales (palm) are used too"),
    flag("--teacher-name", nargs="*", default=[], help="teachers whose rationales the student learns "
         "(none = label only), e.g. palm gemma3"),
    flag("--alpha", type=float, nargs="*", default=None, help="one weight per --teacher-name (default 1)"),
    flag("--answer-format", choices=["letter", "text"], default="letter", help="multiple-choice answers as "
         "'(d) math problem' (letter, default) or the choice's text 'math problem', scored length-normalised "
         "(text; `slimkit eval --task` scores a student in the format it was trained in)"),
    flag("-o", "--output", required=True, type=Path, help="output checkpoint directory"),
    flag("--tokens", type=int, required=True, help="training budget in tokens (padded windows)"),
    flag("--seq-len", type=int, default=256),
    flag("--batch-size", type=int, default=8),
    flag("--micro-batch", type=int, default=1),
    flag("--lr", type=float, default=5e-5),
    flag("--eval-every", type=int, default=0),
    flag("--save-every", type=int, default=0),
    flag("--precision", choices=["auto", "fp32", "bf16"], default="auto"),
    flag("--seed", type=int, default=0),
    flag("--resume", action="store_true"),
)


def cmd_rationale_generate(args: argparse.Namespace) -> int:
    from compress.rationale.generate import generate_for_task

    data, rep = generate_for_task(
        args.task, args.teacher, args.output, split=args.split, limit=args.limit, model=args.model, name=args.name,
        k_shot=args.k_shot, concurrency=args.concurrency, max_tokens=args.max_tokens, temperature=args.temperature,
        seed=args.seed, template=args.template, timeout=args.timeout, retries=args.retries,
        api_key_env=args.api_key_env, example_teacher=args.examples_teacher, chat=False if args.completion else None,
        answer_format=args.answer_format)
    if data.problems:
        print(f"{len(data.problems)} task records have problems (first: {data.problems[0]})", file=sys.stderr)
    c = rep.counts()
    print(f"wrote {rep.out}: {c['generated']} generated, {c['skipped_cached']} already there, "
          f"{c['inconsistent']} inconsistent with the gold answer, {c['failed']} failed, {c['empty']} without "
          "an explanation" + (" (rerun to retry them)" if rep.failed or rep.empty else ""))
    return 0


def rationale_config(args: argparse.Namespace) -> Any:
    from compress.distill.config import DistillConfig

    return DistillConfig(tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size,
                         micro_batch=args.micro_batch, lr=args.lr, eval_every=args.eval_every,
                         save_every=args.save_every, precision=args.precision, seed=args.seed)


def cmd_rationale_train(args: argparse.Namespace) -> int:
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
    res = train_rationale(args.student, task.records, rationales, alphas, args.output, rationale_config(args),
                          resume=args.resume, answer_format=args.answer_format)
    print(f"wrote {res.out} after {res.steps} steps ({res.tokens} tokens); held-out answer ppl "
          f"{res.evals[-1]['heldout_ppl']:.3f}")
    return 0
