"""Teacher-forced chain-of-thought prompts with in-context examples (TinyLLM, Distilling Step-by-Step).

The teacher sees the question, its choices and the GOLD answer and is asked why that answer is
right, after K solved examples drawn (seeded, per record) from the task's training set; each
example shows its rationale from the ``palm`` teacher when the pool has one. The prompt is a chat
exchange: a system message (the instruction) and one user message (examples, then the query).

Every part is a `str.format` template (`PromptTemplate`); override any of them from a YAML/JSON
file (`PromptTemplate.from_file`, CLI ``--template``). Placeholders: {question}, {context},
{letter}, {choice}, {answer} (for multiple choice "(b) bridge"), {rationale}.

The answer format the student is trained in (compress.rationale.formats) decides how choices and
answers are shown to the teacher too: "letter" lists "(b) bridge" and answers "(b) bridge"; "text"
lists the choices by their words (`choice_text`) and answers "bridge", so that a rationale's
"So the answer is ..." is in the words the student learns, with no letter bound to a choice.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import string
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from compress.errors import SlimkitError
from compress.rationale.tasks import LETTERS, PALM, TaskRecord

# Placeholders each part may use.
_ALLOWED = {"system": set(), "context": {"context"}, "question": {"question"}, "choices_header": set(),
            "choice": {"letter", "choice"}, "choice_text": {"choice"}, "answer": {"answer"}, "example_rationale": {"rationale", "answer"},
            "query_rationale": {"answer"}, "separator": set()}


@dataclass(frozen=True)
class PromptTemplate:
    system: str = ("For each question the correct answer is given. Explain step by step, in two or three "
                   "sentences, why that answer is correct, then finish with \"So the answer is\" and the answer.")
    context: str = "Context: {context}\n"
    question: str = "Q: {question}\n"
    choices_header: str = "Answer Choices:\n"
    choice: str = "({letter}) {choice}\n"
    choice_text: str = "- {choice}\n"     # a choice in the text answer format
    answer: str = "Correct answer: {answer}\n"
    example_rationale: str = "Explanation: {rationale} So the answer is {answer}.\n"
    query_rationale: str = "Explanation:"
    separator: str = "\n"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str):
                raise SlimkitError(f"prompt template part {f.name!r} must be a string")
            try:
                names = {n for _, n, _, _ in string.Formatter().parse(value) if n is not None}
            except ValueError as exc:
                raise SlimkitError(f"prompt template part {f.name!r} is not a valid format string: {exc}") from None
            bad = names - _ALLOWED[f.name]
            if bad:
                raise SlimkitError(f"prompt template part {f.name!r} uses {{{sorted(bad)[0]}}}; allowed there: "
                                   f"{', '.join('{' + a + '}' for a in sorted(_ALLOWED[f.name])) or 'none'}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PromptTemplate:
        unknown = set(d) - set(_ALLOWED)
        if unknown:
            raise SlimkitError(f"unknown prompt template part {sorted(unknown)[0]!r}; parts: {', '.join(_ALLOWED)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PromptTemplate:
        """Defaults overridden by the parts a YAML or JSON mapping names."""
        import yaml

        try:
            d = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise SlimkitError(f"cannot read prompt template {path}: {exc}".split("\n")[0]) from None
        if not isinstance(d, dict):
            raise SlimkitError(f"prompt template {path} must be a mapping of part name -> format string")
        return cls.from_dict(d)


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str

    @property
    def text(self) -> str:
        """One string for completion endpoints: instruction, blank line, examples and query."""
        return f"{self.system}\n\n{self.user}" if self.system else self.user

    @property
    def sha(self) -> str:
        """Short content hash (what the rationale cache records)."""
        return hashlib.sha256(json.dumps([self.system, self.user]).encode()).hexdigest()[:16]


def answer_text(record: TaskRecord, answer_format: str = "letter") -> str:
    """The gold answer as shown to the teacher: "(b) bridge" for multiple choice in the letter format,
    else the answer itself."""
    letter = record.letter() if answer_format == "letter" else None
    return f"({letter}) {record.answer}" if letter else record.answer


def _render_problem(record: TaskRecord, t: PromptTemplate, fmt: str) -> str:
    parts = [t.context.format(context=record.context)] if record.context else []
    parts.append(t.question.format(question=record.question))
    if record.choices:
        parts.append(t.choices_header)
        parts += [t.choice.format(letter=LETTERS[i], choice=c) if fmt == "letter" else t.choice_text.format(choice=c)
                  for i, c in enumerate(record.choices)]
    parts.append(t.answer.format(answer=answer_text(record, fmt)))
    return "".join(parts)


def build_prompt(record: TaskRecord, examples: list[TaskRecord], template: PromptTemplate | None = None,
                 example_teacher: str = PALM, answer_format: str = "letter") -> Prompt:
    """The teacher-forced prompt for RECORD after EXAMPLES (shown with their EXAMPLE_TEACHER rationale if
    any), choices and answers shown in ANSWER_FORMAT."""
    t = template or PromptTemplate()
    blocks = []
    for ex in examples:
        block = _render_problem(ex, t, answer_format)
        rationale = (ex.rationales or {}).get(example_teacher)
        if rationale:
            block += t.example_rationale.format(rationale=rationale.strip(), answer=answer_text(ex, answer_format))
        blocks.append(block)
    blocks.append(_render_problem(record, t, answer_format)
                  + t.query_rationale.format(answer=answer_text(record, answer_format)))
    return Prompt(system=t.system, user=t.separator.join(blocks))


class ExampleSampler:
    """K in-context examples per record, drawn from POOL with a per-record seed (so a record's prompt
    does not depend on which other records are generated, in which order, or on the pool's order),
    never the record itself.
    Records with an EXAMPLE_TEACHER rationale are preferred: when the pool has any, only they are drawn."""

    def __init__(self, pool: list[TaskRecord], k: int, seed: int = 0, example_teacher: str = PALM):
        if k < 0:
            raise SlimkitError(f"--k-shot must be >= 0, got {k}")
        with_rationale = [r for r in pool if (r.rationales or {}).get(example_teacher)]
        self.candidates = sorted(with_rationale or pool, key=lambda r: r.id)  # independent of the pool's order
        if k and len(self.candidates) <= k:
            raise SlimkitError(f"{k} in-context examples need more than {len(self.candidates)} example records; "
                               "lower --k-shot or give a larger example pool")
        self.k, self.seed = k, seed

    def __call__(self, record: TaskRecord) -> list[TaskRecord]:
        if not self.k:
            return []
        rng = random.Random(f"{self.seed}:{record.id}")
        drawn = rng.sample(self.candidates, self.k + 1)
        return [r for r in drawn if r.id != record.id][: self.k]
