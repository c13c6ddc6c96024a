"""Answers in generated text: parse what a teacher's or student's text says the answer is, compare with gold."""
from __future__ import annotations

import ast
import operator
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compress.rationale.tasks import TaskRecord

LETTERS = "abcdefghijklmnopqrstuvwxyz"  # choice (a) is the first

# "So the answer is (b) bridge.", "The answer is 42", "Answer: neutral", "answer: (c)"
ANSWER_MARKER = re.compile(r"\banswer\s*(?:is|:)\s*", re.IGNORECASE)
LETTER_TOKEN = re.compile(r"\(([a-z])\)", re.IGNORECASE)  # "(b)"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def parse_answer(record: TaskRecord, text: str, *, require_marker: bool = False) -> str | None:
    """The answer TEXT states for RECORD's question, in the form of `record.answer`, or None.

    With an answer statement ("the answer is ...", "Answer: ...") the last one is read; without one
    the first line of TEXT is taken as the answer (what a student prompted for the answer outputs),
    unless REQUIRE_MARKER. Multiple choice: a letter "(b)" or a choice's text; numbers: an arithmetic
    expression or the first number; other answers: the line itself.
    """
    found = list(ANSWER_MARKER.finditer(text))
    if found:
        segment = text[found[-1].end():]
    elif require_marker:
        return None
    else:
        segment = text
    segment = segment.strip().split("\n")[0].strip()
    if not segment:
        return None
    if record.kind == "choice":
        return _parse_choice(record.choices or (), segment)
    if record.kind == "number":
        return _parse_number(segment)
    return _norm(segment) or None


def answer_matches(record: TaskRecord, text: str) -> bool:
    """Whether the answer parsed from TEXT is RECORD's gold answer."""
    got = parse_answer(record, text)
    return got is not None and is_gold(record, got)


def contradicts(record: TaskRecord, text: str) -> bool:
    """TEXT states an answer ("the answer is ...") and it is not the gold one (no statement: no contradiction)."""
    stated = parse_answer(record, text, require_marker=True)
    return stated is not None and not is_gold(record, stated)


def is_gold(record: TaskRecord, parsed: str) -> bool:
    """Whether PARSED (an answer from `parse_answer`) is RECORD's gold answer (numbers: relative 1e-4)."""
    if record.kind == "number":
        a, b = _number(parsed), _number(record.answer)
        return a is not None and b is not None and abs(a - b) <= 1e-4 * max(1.0, abs(b))
    if record.kind == "choice":
        return parsed == record.answer
    return parsed == _norm(record.answer) or parsed.startswith(_norm(record.answer) + " ")


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().strip(".,;:!?\"'`*").strip().lower())


def _parse_choice(choices: tuple[str, ...], segment: str) -> str | None:
    letters = {m.group(1).lower() for m in LETTER_TOKEN.finditer(segment)}
    picked = {choices[LETTERS.index(c)] for c in letters if LETTERS.index(c) < len(choices)}
    if len(picked) == 1:
        return picked.pop()
    if picked:
        return None  # "(a) or (e)": ambiguous
    seg = _norm(segment)
    bare = re.fullmatch(r"([a-z])\)?", seg)
    if bare and LETTERS.index(bare.group(1)) < len(choices):
        return choices[LETTERS.index(bare.group(1))]
    exact = [c for c in choices if _norm(c) == seg]
    if exact:
        return exact[0]
    hits = {c: m.start() for c in choices if (m := re.search(rf"(?<!\w){re.escape(_norm(c))}(?!\w)", seg))}
    if not hits:
        return None
    first = min(hits.values())
    at_first = {c for c, pos in hits.items() if pos == first}
    return max(at_first, key=len) if len(hits) == 1 or first == 0 else None


def _parse_number(segment: str) -> str | None:
    expr = segment.replace("$", "").replace(",", "").rstrip(".").strip()
    value = eval_arithmetic(expr)
    if value is None:
        m = _NUMBER.search(segment)
        value = _number(m.group(0).replace(",", "")) if m else None
    return None if value is None else format_number(value)


def _number(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def format_number(x: float) -> str:
    """42.0 -> "42", 5.625 -> "5.625" (10 significant digits)."""
    return str(int(round(x))) if abs(x - round(x)) < 1e-9 else format(x, ".10g")


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def eval_arithmetic(expr: str) -> float | None:
    """Value of a + - * / expression of numbers ("( 84.0 / 2.0 )"), None if it is anything else.

    Written by hand over `ast` because eval() would run arbitrary code and the expressions are tiny.
    """
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("not arithmetic")

    try:
        return ev(ast.parse(expr.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
