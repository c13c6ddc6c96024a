"""Block-wise distillation of a pruned student: every block's hidden-state error against the
teacher falls (or the block is left as it was), and the stage runs before KD in the trainer."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from distill_fixtures import ROOT, one_thread  # noqa: F401

from compress.distill.blockwise import blockwise
from compress.distill.config import DistillConfig
from compress.distill.teachers import TeacherSpec
from compress.distill.trainer import distill
from compress.errors import SlimkitError


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny llama teacher and a student pruned from it (one block removed, FFN narrowed)."""
    from compress.checkpoint import save
    from compress.prune import PruneConfig, prune

    root = tmp_path_factory.mktemp("blockwise")
    teacher = ROOT.tiny_llama(0)
    save(teacher, root / "teacher")
    n = len(teacher.model.model.layers)
    res = prune(copy.deepcopy(teacher), PruneConfig(method="magnitude", shape={"layers": n - 1, "ffn": 96},
                                                    align=8), progress=False)
    save(res.checkpoint, root / "student", stage=res.stage)
    (root / "data.txt").write_text(ROOT.TRAIN_TEXT * 2)
    return root


def test_every_blocks_hidden_state_error_falls(pruned):
    from compress.checkpoint import load

    student, teacher = load(pruned / "student"), load(pruned / "teacher")
    ids = torch.randint(0, student.model.config.vocab_size, (6, 32), generator=torch.Generator().manual_seed(0))
    report = blockwise(student.model, teacher.model, ids, student.history, lr=3e-3, batch=2, steps_per_block=12,
                       progress=False)
    blocks = report["blocks"]
    assert len(blocks) == len(student.model.model.layers)
    assert all(b["rel_err_after"] <= b["rel_err_before"] for b in blocks)
    assert sum(b["applied"] for b in blocks) == len(blocks)   # with these steps every block improves
    assert any(b["teacher_blocks"][1] > b["teacher_blocks"][0] for b in blocks), blocks   # one spans the removed block


def test_blockwise_runs_before_kd_and_is_recorded(pruned, tmp_path):
    cfg = DistillConfig(tokens=2 * 4 * 32, seq_len=32, batch_size=4, micro_batch=2, precision="fp32", lr=1e-3,
                        heldout_fraction=0.1, eval_windows=4, blockwise_tokens=4 * 32)
    res = distill(pruned / "student", [TeacherSpec(str(pruned / "teacher"))], tmp_path / "out", cfg,
                  data=[pruned / "data.txt"], progress=False)
    stage = json.loads((res.out / "slimkit.json").read_text())["stages"][-1]
    bw = stage["metrics"]["blockwise"]
    assert bw["tokens"] == 4 * 32 and bw["rel_err_after"] <= bw["rel_err_before"]
    with pytest.raises(SlimkitError, match="pruned by slimkit"):   # the teacher itself has no prune stage
        distill(pruned / "teacher", [TeacherSpec(str(pruned / "teacher"))], tmp_path / "o2", cfg,
                data=[pruned / "data.txt"], progress=False)
