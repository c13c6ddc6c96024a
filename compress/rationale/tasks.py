"""Task data for rationale distillation: one schema, loaders for the bundled research sets and user files.

A task file is JSON lines (`.jsonl`, `.json`, optionally `.gz`; a JSON array is accepted too), one
record per line::

    {"id": "q1",                      # unique string
     "question": "Where do bums live?",
     "choices": ["beach", "bridge"],   # list of strings, or null for an open answer
     "answer": "bridge",               # for multiple choice: one of the choices, verbatim
     "context": null,                  # optional passage / premise shown before the question
     "rationales": {"palm": "..."}}    # optional: teacher name -> rationale (why the answer is right)

`load_task` also knows three names, read from ``../shared/data/rationale`` (or ``$SLIMKIT_RATIONALE_DATA``)
with the PaLM-540B chain-of-thought outputs of Distilling Step-by-Step attached as teacher ``palm``:

- ``cqa`` (CommonsenseQA, splits train / test): five choices.
- ``svamp`` (math word problems, train / test): the answer is the value of the dataset's equation,
  written as a plain number ("42", "5.625"); ``choices`` is null.
- ``esnli`` (train = the valid file, test): ``context`` is the premise, ``question`` the hypothesis,
  choices entailment / neutral / contradiction.

Records that cannot be used (missing fields, an answer that is not one of the choices, a duplicate id)
are left out and reported as `Problem`s with their id; a PaLM output that cannot be parsed keeps the
record without a ``palm`` rationale and is reported too. Nothing is dropped without being counted.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from compress.errors import SlimkitError
from compress.rationale.answers import (LETTERS, _number, answer_matches, contradicts, eval_arithmetic,
                                        format_number, is_gold, parse_answer)

__all__ = ["BUILTIN_TASKS", "ESNLI_LABELS", "LETTERS", "PALM", "Problem", "TaskData", "TaskRecord", "answer_matches",
           "contradicts", "data_root", "eval_arithmetic", "format_number", "is_gold", "load_task",
           "parse_answer", "parse_palm_output", "write_task"]

BUILTIN_TASKS = ("cqa", "svamp", "esnli")
# File split behind each split name (e-SNLI has no train file here: train on the valid split).
_SPLIT_FILES = {"cqa": {"train": "train", "test": "test"},
                "svamp": {"train": "train", "test": "test"},
                "esnli": {"train": "valid", "valid": "valid", "test": "test"}}
# Rows per PaLM output batch file llm/<split>_CoT_<k>.json (README of the shared data).
_LLM_BATCH = {"cqa": 1000, "svamp": 500, "esnli": 5500}
ESNLI_LABELS = ("entailment", "neutral", "contradiction")  # e-SNLI's integer labels 0, 1, 2
PALM = "palm"


@dataclass(frozen=True)
class TaskRecord:
    id: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None
    context: str | None = None
    rationales: dict[str, str] | None = None

    @property
    def kind(self) -> str:
        """"choice" (multiple choice), "number" (numeric answer) or "text" (anything else)."""
        if self.choices:
            return "choice"
        return "number" if _number(self.answer) is not None else "text"

    def letter(self) -> str | None:
        """Letter of the gold answer among the choices ((a) is the first), None for open answers."""
        return LETTERS[self.choices.index(self.answer)] if self.choices else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "choices": list(self.choices) if self.choices else None,
                "answer": self.answer, "context": self.context, "rationales": self.rationales}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskRecord:
        """Validate one schema record; ValueError says what is wrong with it."""
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        for key in ("question", "answer"):
            if not isinstance(d.get(key), str) or not d[key].strip():
                raise ValueError(f"missing or empty {key!r}")
        choices = d.get("choices")
        if choices is not None:
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
                raise ValueError("'choices' must be null or a list of at least 2 non-empty strings")
            if len(choices) > len(LETTERS):
                raise ValueError(f"more than {len(LETTERS)} choices")
            if d["answer"] not in choices:
                raise ValueError(f"answer {d['answer']!r} is not one of the choices")
        context = d.get("context")
        if context is not None and not isinstance(context, str):
            raise ValueError("'context' must be a string or null")
        rationales = d.get("rationales")
        if rationales is not None and not (isinstance(rationales, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in rationales.items())):
            raise ValueError("'rationales' must be null or an object of teacher name -> string")
        return cls(id=_record_id(d), question=d["question"], answer=d["answer"],
                   choices=tuple(choices) if choices else None, context=context or None,
                   rationales=dict(rationales) if rationales else None)


@dataclass(frozen=True)
class Problem:
    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.id}: {self.reason}"


@dataclass
class TaskData:
    """What `load_task` returns: the usable records, the problems found, and counts."""
    name: str
    split: str
    records: list[TaskRecord]
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[TaskRecord]:
        return iter(self.records)


def _record_id(d: dict[str, Any]) -> str:
    rid = d.get("id")
    if not isinstance(rid, str) or not rid:
        raise ValueError("missing 'id'")
    return rid


def data_root() -> Path:
    """../shared/data/rationale beside the repository, or $SLIMKIT_RATIONALE_DATA."""
    env = os.environ.get("SLIMKIT_RATIONALE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rationale"


def load_task(name_or_path: str | os.PathLike, split: str = "train", *, limit: int | None = None) -> TaskData:
    """Records of a bundled task (cqa, svamp, esnli; SPLIT train/test) or of a task file in the schema."""
    name = str(name_or_path)
    if name in BUILTIN_TASKS:
        data = _load_builtin(name, split)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise SlimkitError(f"task {name!r} is neither a file nor one of {', '.join(BUILTIN_TASKS)}")
        data = _load_user_file(path)
    if limit is not None:
        data.records = data.records[:limit]
    data.counts["records"] = len(data.records)
    data.counts["problems"] = len(data.problems)
    return data


def write_task(records: list[TaskRecord], path: str | os.PathLike) -> Path:
    """Write records as a schema jsonl file (atomically)."""
    from compress.atomic import atomic_write

    path = Path(path)
    atomic_write(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records).encode())
    return path


def _open_text(path: Path) -> str:
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
            return f.read()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise SlimkitError(f"cannot read {path}: {exc}") from None


def _load_user_file(path: Path) -> TaskData:
    text = _open_text(path)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SlimkitError(f"{path} is not valid JSON ({exc}): fix the file") from None
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                m = re.search(r'"id"\s*:\s*"([^"]*)"', line)
                where = f"record {m.group(1)!r} (line {lineno})" if m else f"line {lineno}"
                raise SlimkitError(f"{path}: {where} is not valid JSON ({exc.msg}); fix that line") from None
    if not rows:
        raise SlimkitError(f"{path} holds no records; see the task schema in `compress/rationale/tasks.py`")
    data = TaskData(name=str(path), split="file", records=[])
    seen: set[str] = set()
    for i, row in enumerate(rows):
        rid = row.get("id") if isinstance(row, dict) and isinstance(row.get("id"), str) and row["id"] else f"#{i + 1}"
        try:
            rec = TaskRecord.from_dict(row)
        except ValueError as exc:
            data.problems.append(Problem(rid, str(exc)))
            continue
        if rec.id in seen:
            data.problems.append(Problem(rec.id, "duplicate id (later record left out)"))
            continue
        seen.add(rec.id)
        data.records.append(rec)
    return data


# ---------------------------------------------------------------------------------------------------
# The Distilling Step-by-Step files (../shared/data/rationale)

def _read_jsonl_gz(path: Path) -> list[Any]:
    """The rows of a jsonl file; a line that is not JSON becomes a string saying so (reported by the
    caller under the record's id; the row keeps its place, since the PaLM outputs align by index)."""
    if not path.is_file():
        raise SlimkitError(f"{path} not found: the bundled tasks need ../shared/data/rationale "
                           "(or set SLIMKIT_RATIONALE_DATA)")
    rows: list[Any] = []
    for line in _open_text(path).splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                rows.append(f"not valid JSON ({exc.msg})")
    return rows


def _read_llm_outputs(root: Path, name: str, file_split: str, n: int) -> list[str]:
    outputs: list[str] = []
    for k in range((n + _LLM_BATCH[name] - 1) // _LLM_BATCH[name]):
        path = root / name / "llm" / f"{file_split}_CoT_{k}.json.gz"
        if not path.is_file():
            raise SlimkitError(f"{path} not found: the PaLM rationales of {name} {file_split} are incomplete")
        try:
            batch = json.loads(_open_text(path))
        except json.JSONDecodeError as exc:
            raise SlimkitError(f"{path} is not valid JSON ({exc.msg}); restore it from the shared data") from None
        if not isinstance(batch, list):
            raise SlimkitError(f"{path} is not a JSON array of PaLM outputs; restore it from the shared data")
        outputs += batch
    if len(outputs) != n:
        raise SlimkitError(f"{root / name / 'llm'}: {len(outputs)} PaLM outputs for {n} {file_split} records")
    return outputs


def _load_builtin(name: str, split: str) -> TaskData:
    if split not in _SPLIT_FILES[name]:
        raise SlimkitError(f"task {name} has no split {split!r}; use one of {', '.join(_SPLIT_FILES[name])}")
    file_split = _SPLIT_FILES[name][split]
    root = data_root()
    rows = _read_jsonl_gz(root / name / f"{name}_{file_split}.json.gz")
    outputs = _read_llm_outputs(root, name, file_split, len(rows))
    data = TaskData(name=name, split=split, records=[])
    disagree = 0
    for i, (row, output) in enumerate(zip(rows, outputs)):
        rid = (row.get("id") if isinstance(row, dict) else None) or f"{name}-{file_split}-{i}"
        try:
            rec = TaskRecord.from_dict(_convert_row(name, row, rid))
        except ValueError as exc:
            data.problems.append(Problem(rid, str(exc)))
            continue
        parsed = parse_palm_output(name, output) if isinstance(output, str) else None
        if parsed is None:
            data.problems.append(Problem(rid, "PaLM output has no answer statement (kept without a palm rationale)"))
        else:
            rationale, palm_answer = parsed
            rec = TaskRecord(rec.id, rec.question, rec.answer, rec.choices, rec.context, {PALM: rationale})
            disagree += not answer_matches(rec, f"The answer is {palm_answer}")
        data.records.append(rec)
    data.counts["palm_rationales"] = sum(bool(r.rationales) for r in data.records)
    data.counts["palm_disagrees_with_gold"] = disagree  # PaLM's own answer is wrong; the paper keeps these
    return data


def _convert_row(name: str, row: Any, rid: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(row if isinstance(row, str) else "not a JSON object")
    if name == "cqa":
        return {"id": rid, "question": row.get("question"), "choices": row.get("choices"), "answer": row.get("answer")}
    if name == "svamp":
        value = eval_arithmetic(str(row.get("label", "")))
        if value is None:
            raise ValueError(f"equation {row.get('label')!r} cannot be evaluated")
        return {"id": rid, "question": row.get("input"), "answer": format_number(value)}
    label = row.get("label")
    if label not in range(len(ESNLI_LABELS)):
        raise ValueError(f"label {label!r} is not 0, 1 or 2")
    return {"id": rid, "context": row.get("premise"), "question": row.get("hypothesis"),
            "choices": list(ESNLI_LABELS), "answer": ESNLI_LABELS[label]}


def parse_palm_output(name: str, output: str) -> tuple[str, str] | None:
    """(rationale, PaLM's stated answer) of one raw completion, cut as the data README says, or None."""
    if name == "esnli":
        rationale, sep, rest = output.partition("Answer:")
        answer = rest.strip().split("\n")[0].strip()
        return (rationale.strip(), answer) if sep and rationale.strip() and answer else None
    marker = "So the answer is" if name == "cqa" else "The answer is"
    parts = output.split("Q:")[0].split(marker)
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        return None
    return parts[0].strip(), parts[1].strip().rstrip(".").strip()
