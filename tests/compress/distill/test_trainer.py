"""The trainer: gradients reach the student only, exact resume, 2-process gloo == 1 process,
data-free mode, multi-teacher with a logit cache, CLI errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distill_fixtures import ROOT, one_thread, tiny_dirs  # noqa: F401

from compress.distill.config import DistillConfig
from compress.distill.objective import DistillModule, compute_loss, prepare_teachers
from compress.distill.teachers import Teacher, TeacherSpec, freeze, make_specs
from compress.distill.trainer import distill

REPO = Path(__file__).resolve().parents[3]


def _cfg(**kw) -> DistillConfig:
    base = dict(tokens=6 * 4 * 32, seq_len=32, batch_size=4, micro_batch=2, precision="fp32", lr=1e-3,
                heldout_fraction=0.1, eval_windows=4)
    return DistillConfig(**{**base, **kw})


def _log(out: Path) -> list[dict]:
    state = out.parent / f"{out.name}.state"
    return [json.loads(line) for line in (state / "train_log.jsonl").read_text().splitlines()]


def _wide_teacher():
    """A teacher wider and deeper than the student (hidden 96, 3 layers), same tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = ROOT.tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512)
    torch.manual_seed(3)
    return LlamaForCausalLM(cfg), tok


def test_gradients_reach_the_student_and_projections_only():
    student = ROOT.tiny_llama(0).model.train()
    t_model, tok = _wide_teacher()
    spec = TeacherSpec("wide", loss="jsd", feature_weight=1.0, relation_weight=1.0, feature_loss="cosine")
    teachers = [Teacher(spec, freeze(t_model), tok, "wide")]
    prepare_teachers(student, teachers)
    module = DistillModule(student, teachers)
    assert [m.weight.shape for m in module.projections["0"].maps] == [torch.Size([96, 64])] * 2
    ids = torch.randint(0, len(tok), (2, 16), generator=torch.Generator().manual_seed(0))
    parts = compute_loss(module, teachers, ids, [None], ce_weight=0.5, relation_layer=-1,
                         autocast=lambda: torch.autocast("cpu", enabled=False))
    assert set(parts.parts) == {"ce", "t0_jsd", "t0_feature", "t0_relation"}
    assert all(v > 0 for v in parts.parts.values())
    parts.total.backward()
    assert all(p.grad is None for p in t_model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad.abs().sum() > 0 for p in module.projections.parameters())


def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_dirs, tmp_path):
    student, teacher, data = tiny_dirs
    specs = [TeacherSpec(str(teacher), feature_weight=0.5)]
    cfg = _cfg(save_every=3)
    full = distill(student, specs, tmp_path / "full", cfg, data=[data], progress=False)

    class Preempted(Exception):
        pass

    def stop(step, _metrics):
        if step == 5:
            raise Preempted  # after the step-3 checkpoint, before the end
    with pytest.raises(Preempted):
        distill(student, specs, tmp_path / "cut", cfg, data=[data], progress=False, callback=stop)
    with pytest.raises(Exception, match="pass --resume"):
        distill(student, specs, tmp_path / "cut", cfg, data=[data], progress=False)
    resumed = distill(student, specs, tmp_path / "cut", cfg, data=[data], progress=False, resume=True)
    from safetensors.torch import load_file

    a, b = load_file(full.out / "model.safetensors"), load_file(resumed.out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses_full = [r["loss"] for r in _log(tmp_path / "full") if "loss" in r]
    losses_cut = [r["loss"] for r in _log(tmp_path / "cut") if "loss" in r]
    # The interrupted run logged steps 1-5, the resumed one 4-6: identical numbers, step for step.
    assert losses_cut == losses_full[:5] + losses_full[3:]
    history = json.loads((resumed.out / "slimkit.json").read_text())
    assert history["stages"][-1]["stage"] == "distill"


def test_two_gloo_processes_match_one_process(tiny_dirs, tmp_path):
    """torchrun --nproc-per-node 2 (gloo, CPU) through the CLI vs one in-process run, same global batch."""
    student, teacher, data = tiny_dirs
    args = ["distill", str(student), "--teacher", str(teacher), "--data", str(data), "--tokens", str(3 * 4 * 32),
            "--seq-len", "32", "--batch-size", "4", "--micro-batch", "1", "--precision", "fp32",
            "--logit-cache", str(tmp_path / "cache"), "--top-k", "16", "--loss", "rkl"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "slimkit.cli", *args, "-o", str(tmp_path / "two")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = distill(student, make_specs([str(teacher)], loss="rkl"), tmp_path / "one",
                  DistillConfig(tokens=3 * 4 * 32, seq_len=32, batch_size=4, micro_batch=1, precision="fp32",
                                logit_cache=str(tmp_path / "cache"), top_k=16),  # = the CLI's defaults
                  data=[data], progress=False)
    two_losses = [r["loss"] for r in _log(tmp_path / "two") if "loss" in r]
    one_losses = [r["loss"] for r in _log(tmp_path / "one") if "loss" in r]
    assert len(two_losses) == len(one_losses) == 3
    assert one_losses == pytest.approx(two_losses, abs=1e-4)
    assert one.evals[-1]["heldout_ppl"] == pytest.approx(_log(tmp_path / "two")[-1]["heldout_ppl"], rel=1e-4)


def test_data_free_and_multi_teacher_with_cache(tiny_dirs, tmp_path):
    student, teacher, _ = tiny_dirs
    specs = [TeacherSpec(str(teacher), weight=0.7), TeacherSpec(str(student), weight=0.3, loss="tv")]
    res = distill(student, specs, tmp_path / "out", _cfg(tokens=2 * 4 * 32, data_free_tokens=400,
                                                          logit_cache=str(tmp_path / "cache"), ce_weight=0.1),
                  progress=False)
    log = _log(tmp_path / "out")
    assert {"ce", "t0_fkl", "t1_tv"} <= set(log[0])
    assert (tmp_path / "out.state" / "data_free_corpus.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "teacher0-heldout-k64", "teacher0-train-k64-T1", "teacher1-train-k64-T1"]
    assert 0 <= res.evals[-1]["top1_agreement"] <= 1 and res.evals[-1]["kl_to_teacher"] > 0


def test_a_complete_logit_cache_serves_a_run_that_never_loads_the_teacher(tiny_dirs, tmp_path, monkeypatch):
    from compress.distill import trainer

    student, teacher, data = tiny_dirs
    specs = [TeacherSpec(str(teacher))]
    cfg = _cfg(logit_cache=str(tmp_path / "cache"), top_k=8)
    first = distill(student, specs, tmp_path / "a", cfg, data=[data], progress=False)

    def no_teacher(*a, **k):
        raise AssertionError("the teacher was loaded although its caches are complete")
    monkeypatch.setattr(trainer, "load_teacher", no_teacher)
    second = distill(student, specs, tmp_path / "b", cfg, data=[data], progress=False)
    from safetensors.torch import load_file

    a, b = load_file(first.out / "model.safetensors"), load_file(second.out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)   # the same training, served from the cache
    history = json.loads((second.out / "slimkit.json").read_text())
    assert history["stages"][-1]["metrics"]["teachers_loaded"] == 0
    assert second.evals[-1]["kl_to_teacher"] == pytest.approx(first.evals[-1]["kl_to_teacher"])
    with pytest.raises(AssertionError, match="the teacher was loaded"):   # another top-k: not in the cache
        distill(student, specs, tmp_path / "c", _cfg(logit_cache=str(tmp_path / "cache"), top_k=4), data=[data],
                progress=False)


def test_cli_bad_input_is_one_line_exit_2(tiny_dirs, tmp_path, capsys):
    from compress.checkpoint import Checkpoint, save
    from slimkit.cli import main

    student, teacher, data = tiny_dirs
    common = ["distill", str(student), "--data", str(data), "--tokens", "64", "--seq-len", "32", "--batch-size", "2"]
    assert main(common + ["--teacher", str(teacher), "--teacher-weight", "1", "2", "-o", str(tmp_path / "o")]) == 2
    assert "one weight per teacher" in capsys.readouterr().err
    from test_teachers import _other_tokenizer

    other = ROOT.tiny_llama(2)
    save(Checkpoint(other.model, _other_tokenizer(), other.history), tmp_path / "other")
    capsys.readouterr()
    assert main(common + ["--teacher", str(tmp_path / "other"), "-o", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "different tokenizers" in errors[0] and "vocabulary size" in errors[0]
    assert not (tmp_path / "o").exists()


def test_gemma3_student_and_teacher_with_every_loss():
    student, teacher = ROOT.tiny_gemma3(0).model.train(), ROOT.tiny_gemma3(1).model
    spec = TeacherSpec("g", loss="rkl", temperature=2.0, feature_weight=1.0, relation_weight=0.5,
                       layer_map="1:1,3:3")
    teachers = [Teacher(spec, freeze(teacher), ROOT.tiny_tokenizer(), "g")]
    prepare_teachers(student, teachers)
    module = DistillModule(student, teachers)
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(1))
    parts = compute_loss(module, teachers, ids, [None], 0.0, -1, lambda: torch.autocast("cpu", enabled=False))
    assert set(parts.parts) == {"t0_rkl", "t0_feature", "t0_relation"}
    parts.total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16(monkeypatch):
    from compress.distill import order

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(order, "cpu_has_bf16", lambda native=native: native)
        ctx = order.autocast_for(DistillConfig(tokens=64, seq_len=32, precision="auto"), cpu)()
        assert isinstance(ctx, torch.autocast) == native
        if native:
            with ctx:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        assert not isinstance(order.autocast_for(DistillConfig(tokens=64, seq_len=32, precision="fp32"), cpu)(),
                              torch.autocast)
        assert isinstance(order.autocast_for(DistillConfig(tokens=64, seq_len=32, precision="bf16"), cpu)(),
                          torch.autocast)
