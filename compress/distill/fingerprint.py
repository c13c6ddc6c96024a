"""What a training checkpoint must match to be resumed, checked before any model is loaded.

A checkpoint directory holds `fingerprint.json`: the training options that change the result,
the content digest of the student's source, each teacher's identity (its options, including its
quantization, and its source's digest) and the digests of the data files. Resuming compares the
caller's fingerprint with the newest checkpoint's and names every part that differs, so a changed
teacher, data file, student or option is a one-line error and never a silently stale run (or a
raw load_state_dict traceback when a shape changed).

The token budget is the one option that may grow: a run extended to more tokens continues from
its checkpoint (see trainer._Run._resume for the learning-rate schedule).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from compress.checkpoint import tree_sha256
from compress.errors import SlimkitError

FILE = "fingerprint.json"
EXTENSIBLE = ("tokens",)   # options a resumed run may change (the budget grows, the run continues)


def source_digest(source: str | Path) -> str:
    """Content digest of a model source: a file, a directory's files, a zoo model's shipped file,
    or an in-memory model's weights (compress.live)."""
    from compress import live

    if live.is_live(source):
        return live.digest(source)
    path = Path(source)
    if path.exists():
        return tree_sha256(path) or ""
    from compress import zoo

    try:
        return tree_sha256(zoo.get(str(source)).path()) or ""
    except SlimkitError:
        return f"name:{source}"   # not a local source (a hub id): its name is all there is to compare


def fingerprint(config: dict[str, Any], student: str | Path, teachers: Sequence[Any],
                data: Sequence[str | Path]) -> dict[str, Any]:
    """`config`: the options that must match (a resume-free option removed by the caller);
    `teachers`: TeacherSpec objects; `data`: the training text files (empty: a built corpus)."""
    return {"config": config, "student": source_digest(student),
            "teachers": [{**{k: v for k, v in t.to_dict().items() if k != "source"},   # moved, not changed
                          "sha256": source_digest(t.source)} for t in teachers],
            "data": [{"file": Path(d).name, "sha256": tree_sha256(Path(d))} for d in data]}


def write(directory: Path, fp: dict[str, Any]) -> None:
    (directory / FILE).write_text(json.dumps(fp, indent=1, sort_keys=True, default=str))


def read(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / FILE).read_text())
    except (OSError, ValueError):
        return None


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """What changed, in words ('the student weights', 'teacher 1', 'data', option names)."""
    out = []
    a, b = _unversioned(mine.get("config", {}), theirs.get("config", {})), theirs.get("config", {})
    out += sorted(k for k in set(a) | set(b) if k not in EXTENSIBLE and a.get(k) != b.get(k)
                  and not (k not in b and _is_default(k, a.get(k))))
    if mine.get("student") != theirs.get("student"):
        out.append("the student weights")
    ta, tb = mine.get("teachers", []), theirs.get("teachers", [])
    if len(ta) != len(tb):
        out.append(f"the number of teachers ({len(tb)} -> {len(ta)})")
    else:
        for i, (x, y) in enumerate(zip(ta, tb), 1):
            changed = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            if changed:
                what = "weights" if changed == ["sha256"] else ", ".join("weights" if k == "sha256" else k
                                                                        for k in changed)
                out.append(f"teacher {i} ({what})")
    if mine.get("data") != theirs.get("data"):
        out.append("the training data")
    return out


def _is_default(name: str, value: Any) -> bool:
    """An option added after the checkpoint was written, left at its default, changes nothing."""
    import dataclasses

    from compress.distill.config import DistillConfig

    field = next((f for f in dataclasses.fields(DistillConfig) if f.name == name), None)
    return field is not None and field.default is not dataclasses.MISSING and field.default == value


def _unversioned(mine: Any, theirs: Any) -> Any:
    """`mine` less the config "version" keys `theirs` lacks (a checkpoint from before configs had one)."""
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        return mine
    return {k: _unversioned(v, theirs.get(k)) for k, v in mine.items() if k in theirs or k != "version"}


def check(checkpoint: Path, mine: dict[str, Any]) -> dict[str, Any]:
    """Raise a one-line SlimkitError when `checkpoint` was written by a different run; returns its
    fingerprint."""
    theirs = read(checkpoint)
    if theirs is None:
        raise SlimkitError(f"cannot resume from {checkpoint}: it has no {FILE} (written by an older slimkit or "
                           f"damaged); delete {checkpoint.parent.parent} to start over")
    diff = differences(mine, theirs)
    if diff:
        raise SlimkitError(f"cannot resume from {checkpoint}: {', '.join(diff)} changed since it was written; "
                           f"resume with the same inputs and options, or delete {checkpoint.parent.parent} "
                           "to start over")
    return theirs
