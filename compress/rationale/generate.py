"""Generate rationales for task records into a resumable jsonl cache, and read them back for training.

Each line of the output is one record's rationale from one teacher::

    {"id": "q1", "teacher": "gemma3-270m", "prompt_sha": "3f0c...", "rationale": "Bums often ...",
     "stated_answer": "bridge", "consistent": true}

``rationale`` is the teacher's text up to its final answer statement ("So the answer is ..."),
``stated_answer`` the answer that statement gives (null if none), ``consistent`` false when it is not the
gold answer. Lines are appended and flushed as records complete; a rerun skips (id, teacher) pairs already
in the file, so an interrupted run resumes, and a truncated last line (a crash mid-write) is cut off first.
Inconsistent rationales are kept in the file (and counted) but `load_rationales` leaves them out.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import SlimkitError
from compress.rationale.answers import ANSWER_MARKER, LETTER_TOKEN, contradicts, parse_answer
from compress.rationale.prompts import ExampleSampler, PromptTemplate, build_prompt
from compress.rationale.sources import MalformedResponse, RationaleSource, RecordFailed, TransientSourceError
from compress.rationale.tasks import BUILTIN_TASKS, PALM, TaskData, TaskRecord, load_task

_SENTENCE_END = re.compile(r"(?:[.!?](?=\s)|\n)\s*")  # "5.625" is no sentence end


@dataclass
class GenerationReport:
    generated: int = 0  # new lines written this run
    skipped_cached: int = 0  # records whose (id, teacher) was already in the file
    inconsistent: int = 0  # new lines with consistent: false
    failed: int = 0  # no text from the teacher after the retries (no line; retried on the next run)
    empty: int = 0  # the teacher stated the answer with no explanation before it (no line; retried next run)
    failed_ids: list[str] = field(default_factory=list)
    empty_ids: list[str] = field(default_factory=list)
    out: Path | None = None

    def counts(self) -> dict[str, int]:
        return {"generated": self.generated, "skipped_cached": self.skipped_cached,
                "inconsistent": self.inconsistent, "failed": self.failed, "empty": self.empty}


def split_rationale(record: TaskRecord, text: str) -> tuple[str, str | None, bool]:
    """(rationale without its final answer statement, stated answer or None, consistent with the gold answer).

    The statement is cut from the start of the sentence holding the last "answer is" / "answer:". When
    nothing comes before it, the whole text is kept if the statement goes on to explain ("The answer is
    (d) bridge because bums sleep under bridges"), else the rationale is empty (a bare answer)."""
    stated = parse_answer(record, text, require_marker=True)
    head = text.strip()
    markers = list(ANSWER_MARKER.finditer(head))
    if markers:
        ends = [m.end() for m in _SENTENCE_END.finditer(head, 0, markers[-1].start())]
        full, head = head, head[: ends[-1] if ends else 0].strip()
        if not head:
            tail = LETTER_TOKEN.sub(" ", full[markers[-1].end():].lower())
            for c in sorted(record.choices or (record.answer, stated or ""), key=len, reverse=True):
                tail = tail.replace(c.lower(), " ") if c else tail
            head = full if len(re.findall(r"[a-z]{2,}", tail)) >= 3 else ""
    return head, stated, not contradicts(record, text)


def _entry(line: bytes) -> dict[str, Any] | None:
    try:
        e = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return e if isinstance(e, dict) and isinstance(e.get("id"), str) and isinstance(e.get("teacher"), str) else None


def read_cache(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Entries of a rationale jsonl. A bad last line (a write cut short: no newline, or not a record) is
    ignored, and cut from the file when REPAIR; a bad line before the last is an error."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    entries: list[dict[str, Any]] = []
    pos = good_end = lineno = 0
    while pos < len(raw):
        lineno += 1
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl == -1 else nl + 1
        line = raw[pos:end]
        entry = _entry(line) if nl != -1 else None  # no newline: a partial write even if it parses
        if line.strip() and entry is None:
            if raw[end:].strip():
                raise SlimkitError(f"{path}: line {lineno} is not a rationale record; fix or delete that line")
            break
        if entry is not None:
            entries.append(entry)
        pos = good_end = end
    if repair and good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return entries


def load_rationales(path: str | os.PathLike, *, include_inconsistent: bool = False) -> dict[str, dict[str, str]]:
    """{record id: {teacher: rationale}} from one rationale jsonl; by default consistent, non-empty ones only."""
    path = Path(path)
    if not path.is_file():
        raise SlimkitError(f"rationale file {path} not found; make one with `slimkit rationale generate`")
    out: dict[str, dict[str, str]] = {}
    for e in read_cache(path):
        text = e.get("rationale")
        if isinstance(text, str) and text.strip() and (include_inconsistent or e.get("consistent") is True):
            out.setdefault(e["id"], {})[e["teacher"]] = text
    return out


def _generate_one(record: TaskRecord, source: RationaleSource, sampler: ExampleSampler, template: PromptTemplate,
                  example_teacher: str, retries: int, backoff: float, answer_format: str = "letter"
                  ) -> tuple[str, str] | None:
    """(prompt sha, text), or None when this record failed. Fatal errors propagate."""
    prompt = build_prompt(record, sampler(record), template, example_teacher, answer_format)
    for attempt in range(retries + 1):
        try:
            return prompt.sha, source.generate(prompt, record)
        except TransientSourceError:
            if attempt == retries:
                return None
            time.sleep(backoff * 2 ** attempt)
        except RecordFailed:
            return None
        except MalformedResponse as exc:
            raise SlimkitError(f"record {record.id}: {exc}") from None
    return None


def generate_rationales(records: list[TaskRecord], source: RationaleSource, out_jsonl: str | os.PathLike, *,
                        teacher_name: str | None = None, examples: list[TaskRecord] | None = None, k_shot: int = 4,
                        concurrency: int = 4, seed: int = 0, template: PromptTemplate | None = None,
                        example_teacher: str = PALM, retries: int = 2, backoff: float = 1.0,
                        progress: bool = True, answer_format: str = "letter") -> GenerationReport:
    """Generate SOURCE's rationale for every record not yet in OUT_JSONL (under TEACHER_NAME, default
    the source's name), with K_SHOT in-context examples from EXAMPLES (default: RECORDS themselves).
    Up to CONCURRENCY requests run at once (capped by the source); transient failures are retried
    RETRIES times with exponential BACKOFF seconds. Choices and answers are shown in ANSWER_FORMAT
    (the student's; recorded in each entry when not "letter"); a cached record of the other format
    is refused, not silently reused."""
    from tqdm import tqdm

    if concurrency < 1 or retries < 0:
        raise SlimkitError(f"concurrency must be >= 1 and retries >= 0 (got {concurrency}, {retries})")
    out = Path(out_jsonl)
    if out.is_dir():
        raise SlimkitError(f"{out} is a directory; give the rationale file name, e.g. {out}/rationales.jsonl")
    if not out.parent.is_dir():
        raise SlimkitError(f"directory {out.parent} does not exist; create it or choose another -o")
    teacher = teacher_name or source.name
    cached = {e["id"]: e.get("answer_format", "letter") for e in read_cache(out, repair=True) if e["teacher"] == teacher}
    todo = [r for r in records if r.id not in cached]
    report = GenerationReport(skipped_cached=len(records) - len(todo), out=out)
    sampler = ExampleSampler(examples if examples is not None else records, k_shot, seed, example_teacher)
    template = template or PromptTemplate()
    other = next((r.id for r in records if cached.get(r.id, answer_format) != answer_format), None)
    if other is not None:
        raise SlimkitError(f"{out} holds {teacher}'s rationale for {other} written for the "
                           f"{cached[other]} answer format, not {answer_format}; write to another -o or delete it")
    workers = max(1, min(concurrency, source.max_concurrency))
    bar = tqdm(total=len(todo), desc=f"rationales ({teacher})", unit="rec", disable=not progress or not todo,
               file=sys.stderr, delay=0.5)
    with open(out, "a", encoding="utf-8") as f, ThreadPoolExecutor(workers) as pool:
        pending: dict[Future, TaskRecord] = {}
        queue = iter(todo)
        try:
            while True:
                for rec in islice(queue, 2 * workers - len(pending)):  # bounded: a huge task never floods memory
                    pending[pool.submit(_generate_one, rec, source, sampler, template, example_teacher,
                                        retries, backoff, answer_format)] = rec
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in [f for f in pending if f in finished]:  # in record order: a set's order is arbitrary
                    _record_result(pending.pop(fut), fut.result(), teacher, f, report, answer_format)
                    bar.update(1)
                    bar.set_postfix(inconsistent=report.inconsistent, failed=report.failed, empty=report.empty,
                                    refresh=False)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        finally:
            bar.close()
            f.flush()
            os.fsync(f.fileno())
    return report


def _record_result(rec: TaskRecord, result: tuple[str, str] | None, teacher: str, f: Any,
                   report: GenerationReport, answer_format: str = "letter") -> None:
    if result is None:
        report.failed += 1
        report.failed_ids.append(rec.id)
        return
    rationale, stated, consistent = split_rationale(rec, result[1])
    if not rationale:
        report.empty += 1
        report.empty_ids.append(rec.id)
        return
    f.write(json.dumps({"id": rec.id, "teacher": teacher, "prompt_sha": result[0], "rationale": rationale,
                        "stated_answer": stated, "consistent": consistent,
                        **({"answer_format": answer_format} if answer_format != "letter" else {})},
                       ensure_ascii=False) + "\n")
    f.flush()
    report.generated += 1
    report.inconsistent += not consistent


def generate_for_task(task: str, teacher: str, out_jsonl: str | os.PathLike, *, split: str = "train",
                      limit: int | None = None, model: str | None = None, name: str | None = None, k_shot: int = 4,
                      concurrency: int = 4, max_tokens: int = 128, temperature: float = 0.0, seed: int = 0,
                      template: str | os.PathLike | PromptTemplate | None = None, timeout: float = 60.0,
                      retries: int = 2, api_key_env: str = "OPENAI_API_KEY", example_teacher: str = PALM,
                      chat: bool | None = None, progress: bool = True, answer_format: str = "letter"
                      ) -> tuple[TaskData, GenerationReport]:
    """`slimkit rationale generate`: load TASK (a bundled name or a schema file), make the TEACHER source
    (a spec for `make_source`), generate into OUT_JSONL. In-context examples come from the task's train
    split (a user file: the file itself)."""
    from compress.rationale.sources import make_source

    for flag, value, low in (("--limit", limit, 1), ("--concurrency", concurrency, 1), ("--max-tokens", max_tokens, 1),
                             ("--retries", retries, 0), ("--k-shot", k_shot, 0)):
        if value is not None and value < low:
            raise SlimkitError(f"{flag} must be at least {low}, got {value}")
    if timeout <= 0 or temperature < 0:
        raise SlimkitError("--timeout must be positive and --temperature at least 0")
    if not isinstance(template, PromptTemplate):
        template = PromptTemplate.from_file(template) if template else PromptTemplate()
    data = load_task(task, split, limit=limit)
    if not data.records:
        raise SlimkitError(f"task {task} {split} has no usable records ({len(data.problems)} problems, first: "
                           f"{data.problems[0] if data.problems else 'none'})")
    if task in BUILTIN_TASKS:
        pool = data.records if split == "train" and limit is None else load_task(task, "train").records
    else:
        pool = load_task(task).records if limit is not None else data.records
    source = make_source(teacher, model=model, name=name, max_tokens=max_tokens, temperature=temperature,
                         seed=seed, timeout=timeout, max_retries=retries, api_key_env=api_key_env,
                         concurrency=concurrency, chat=chat)
    report = generate_rationales(data.records, source, out_jsonl, teacher_name=name, examples=pool, k_shot=k_shot,
                                 concurrency=concurrency, seed=seed, template=template,
                                 example_teacher=example_teacher, retries=retries, progress=progress,
                                 answer_format=answer_format)
    return data, report
