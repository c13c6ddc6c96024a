"""Safe resume: a checkpoint written by a different run (teacher, data, student weights, option)
is refused with a one-line error naming what changed, before any model is loaded; a finished run
extended to more tokens continues from its last step on the new budget's schedule."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from distill_fixtures import one_thread, tiny_dirs  # noqa: F401

from compress.distill import trainer
from compress.distill.config import DistillConfig
from compress.distill.teachers import TeacherSpec
from compress.distill.trainer import distill
from compress.errors import SlimkitError


def _cfg(**kw) -> DistillConfig:
    base = dict(tokens=4 * 4 * 32, seq_len=32, batch_size=4, micro_batch=2, precision="fp32", lr=1e-3,
                heldout_fraction=0.1, eval_windows=4, warmup_fraction=0.25)
    return DistillConfig(**{**base, **kw})


def _steps(out: Path) -> list[dict]:
    lines = (out.parent / f"{out.name}.state" / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def finished(tiny_dirs, tmp_path_factory):  # noqa: F811
    """A finished 4-step run (its own copies of the inputs, so tests can change them)."""
    student, teacher, data = tiny_dirs
    root = tmp_path_factory.mktemp("resume")
    for p in (student, teacher):
        shutil.copytree(p, root / p.name)
    shutil.copy(data, root / data.name)
    out = root / "run"
    distill(root / "student", [TeacherSpec(str(root / "teacher"))], out, _cfg(), data=[root / data.name],
            progress=False)
    return root, out


def _copy_run(finished, tmp_path: Path) -> tuple[Path, Path]:
    root, out = finished
    dst = tmp_path / "inputs"
    shutil.copytree(root, dst)
    return dst, dst / out.name


def _refused(monkeypatch, root: Path, out: Path, match: str, cfg: DistillConfig | None = None,
             spec: TeacherSpec | None = None) -> None:
    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the fingerprint was checked")
    monkeypatch.setattr(trainer, "load", no_load)
    monkeypatch.setattr(trainer, "load_teacher", no_load)
    with pytest.raises(SlimkitError, match=match) as err:
        distill(root / "student", [spec or TeacherSpec(str(root / "teacher"))], out, cfg or _cfg(),
                data=[root / "data.txt"], progress=False, resume=True)
    assert "\n" not in str(err.value)


def _perturb(model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    f = model_dir / "model.safetensors"
    weights = load_file(f)
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, f, metadata={"format": "pt"})


def test_changed_student_weights_are_refused_before_loading(finished, tmp_path, monkeypatch):
    root, out = _copy_run(finished, tmp_path)
    _perturb(root / "student")
    _refused(monkeypatch, root, out, "the student weights changed")


def test_changed_teacher_weights_or_options_are_refused(finished, tmp_path, monkeypatch):
    root, out = _copy_run(finished, tmp_path)
    _refused(monkeypatch, root, out, r"teacher 1 \(temperature\) changed",
             spec=TeacherSpec(str(root / "teacher"), temperature=2.0))
    _perturb(root / "teacher")
    _refused(monkeypatch, root, out, r"teacher 1 \(weights\) changed")


def test_changed_data_or_option_is_refused(finished, tmp_path, monkeypatch):
    root, out = _copy_run(finished, tmp_path)
    _refused(monkeypatch, root, out, "lr changed", cfg=_cfg(lr=2e-3))
    (root / "data.txt").write_text((root / "data.txt").read_text() + " one more line")
    _refused(monkeypatch, root, out, "the training data changed")


def test_a_smaller_budget_than_the_checkpoint_is_refused(finished, tmp_path):
    root, out = _copy_run(finished, tmp_path)
    with pytest.raises(SlimkitError, match="past the new budget"):
        distill(root / "student", [TeacherSpec(str(root / "teacher"))], out, _cfg(tokens=2 * 4 * 32),
                data=[root / "data.txt"], progress=False, resume=True)


def test_a_finished_run_extended_to_more_tokens_continues_from_its_last_step(finished, tmp_path):
    root, out = _copy_run(finished, tmp_path)
    before = _steps(out)
    longer = _cfg(tokens=7 * 4 * 32)
    res = distill(root / "student", [TeacherSpec(str(root / "teacher"))], out, longer, data=[root / "data.txt"],
                  progress=False, resume=True)
    after = _steps(out)[len(before):]
    assert [r["step"] for r in before] == [1, 2, 3, 4]
    assert [r["step"] for r in after] == [5, 6, 7] and res.steps == 7
    # the schedule is the new budget's from step 4 on: the rates of a run planned for 7 steps
    planned = distill(root / "student", [TeacherSpec(str(root / "teacher"))], tmp_path / "planned", longer,
                      data=[root / "data.txt"], progress=False)
    lrs = [r["lr"] for r in _steps(tmp_path / "planned")]
    assert [r["lr"] for r in after] == pytest.approx(lrs[4:], rel=1e-12)
    assert [r["lr"] for r in before] != pytest.approx(lrs[:4])   # (the 4-step run's schedule differed)
    assert planned.steps == 7
    state = torch.load(out.parent / "run.state" / "checkpoints" / "step-000007" / "trainer.pt", weights_only=True)
    assert state["step"] == 7


def test_an_option_added_since_the_checkpoint_resumes_at_its_default_only():
    from compress.distill.fingerprint import differences

    theirs = {"config": {"lr": 1e-4, "seq_len": 64}, "student": "s", "teachers": [], "data": "d"}
    mine = {**theirs, "config": {**theirs["config"], "head_chunk": 0}}   # an option newer than the checkpoint
    assert differences(mine, theirs) == []
    assert differences({**mine, "config": {**mine["config"], "head_chunk": 128}}, theirs) == ["head_chunk"]
    assert differences({**mine, "config": {**mine["config"], "no_such_option": 1}}, theirs) == ["no_such_option"]
