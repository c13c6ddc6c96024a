"""Answer formats: how a multiple-choice answer is shown to the student, learned and scored.

- ``letter`` (Distilling Step-by-Step's CommonsenseQA format; the default): the choices are listed
  as "(a) park (b) coloring book ...", the target is "(d) math problem", and a choice is scored by the
  summed log-likelihood of " (d) math problem" after the `[answer]` prompt; the greedy answer is read
  by `parse_answer` (a letter or a choice's text).
- ``text`` (for small students, which learn a letter bound to a choice poorly): the choices are listed
  by their text alone ("Answer Choices: park, coloring book, ..."), the target is the choice's text
  ("math problem"; e-SNLI: the label word "neutral"), and a choice is scored by its length-normalised
  log-likelihood: the MEAN log-probability per token of " math problem" (the sum divided by the
  number of its tokens, so that a long choice is not penalised for its length; lm-eval-harness's
  acc_norm divides by characters instead). The greedy answer must equal the gold choice's text up to
  case, whitespace and surrounding punctuation ("Neutral." matches "neutral").

Open answers (numbers, free text) have no choices and are shown, learned and scored alike in both.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.errors import SlimkitError
from compress.rationale.answers import _norm, answer_matches
from compress.rationale.prompts import answer_text
from compress.rationale.tasks import LETTERS, TaskRecord

ANSWER_FORMATS = ("letter", "text")
DEFAULT_FORMAT = "letter"
# how each format turns a choice's summed log-likelihood into its score (recorded beside the accuracy)
CHOICE_SCORE = {"letter": "sum of log-probabilities of ' (x) choice'",
                "text": "mean log-probability per token of ' choice' (length-normalised)"}


def check_format(fmt: str) -> str:
    if fmt not in ANSWER_FORMATS:
        raise SlimkitError(f"unknown answer format {fmt!r}; choose {' or '.join(ANSWER_FORMATS)} (--answer-format)")
    return fmt


def choices_line(record: TaskRecord, fmt: str) -> str:
    """The choices as the student's prompt lists them ("" for an open question)."""
    if not record.choices:
        return ""
    if fmt == "text":
        return "Answer Choices: " + ", ".join(record.choices) + "\n"
    return "Answer Choices: " + " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(record.choices)) + "\n"


def answer_target(record: TaskRecord, fmt: str) -> str:
    """What the student learns to answer: "(d) math problem" (letter) or "math problem" (text)."""
    return record.answer if fmt == "text" else answer_text(record)


def choice_targets(record: TaskRecord, fmt: str) -> list[str]:
    """The answer each choice would be, in the order of `record.choices` (scored after the prompt)."""
    return [answer_target(TaskRecord(record.id, record.question, c, record.choices, record.context), fmt)
            for c in record.choices or ()]


def choice_score(logprob_sum: float, n_tokens: int, fmt: str) -> float:
    """A choice's score from its summed log-likelihood: the sum (letter) or the mean per token (text)."""
    return logprob_sum / max(n_tokens, 1) if fmt == "text" else logprob_sum


def greedy_correct(record: TaskRecord, text: str, fmt: str) -> bool:
    """Whether the student's greedy answer TEXT is right: for text-format multiple choice its first line
    is the gold choice's text (normalised); otherwise what `answer_matches` parses from it."""
    if fmt == "text" and record.choices:
        lines = text.strip().splitlines()
        return bool(lines) and _norm(lines[0]) == _norm(record.answer)
    return answer_matches(record, text)


def trained_format(model: Any) -> str:
    """The answer format the last `rationale` stage of MODEL's checkpoint was trained in (its slimkit.json,
    beside the weights it was loaded from); "letter" when there is none (any other checkpoint)."""
    where = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    path = Path(where) / "slimkit.json"
    try:
        history = json.loads(path.read_text()) if where and path.is_file() else {}
    except (OSError, ValueError):
        return DEFAULT_FORMAT
    for stage in reversed(history.get("stages", [])):
        if isinstance(stage, dict) and stage.get("stage") == "rationale":
            return str((stage.get("config") or {}).get("answer_format", DEFAULT_FORMAT))
    return DEFAULT_FORMAT
