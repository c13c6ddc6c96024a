"""Rationale distillation training (multi-task prefixes, weighted loss) and task evaluation."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from compress.distill.config import DistillConfig
from compress.distill.losses import weighted_cross_entropy
from compress.rationale.train import ANSWER, build_corpus, explain_prefix, train_rationale

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from rationale_fixtures import mc_records  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tok():
    from conftest import tiny_tokenizer

    return tiny_tokenizer()


def test_corpus_weights_are_the_multi_task_loss():
    tok = _tok()
    records = mc_records(20)
    extra = {"r3": {"gemma": "Bees make honey in hives."}}
    corpus, counts = build_corpus(records, extra, {"palm": 0.5, "gemma": 2.0}, tok, seq_len=256, heldout_fraction=0.1)
    assert counts["answer"] == 18 and counts["explain:palm"] == 18 and counts["too_long"] == 0
    gemma = counts["explain:gemma"]  # r3 has a gemma rationale: learned unless r3 is one of the 2 held out
    assert gemma in (0, 1)
    sums = sorted(round(float(w), 4) for w in corpus.train_weights.sum(1))
    assert sums.count(1.0) == 18 and sums.count(0.5) == 18 and sums.count(2.0) == gemma  # alpha per example
    assert len(sums) == 36 + gemma
    texts = [tok.decode(ids[w > 0]) for ids, w in zip(corpus.train, corpus.train_weights)]
    prompts = [tok.decode(ids[:int((w > 0).nonzero()[0])]) for ids, w in zip(corpus.train, corpus.train_weights)]
    assert any(p.startswith(ANSWER) for p in prompts) and any(p.startswith(explain_prefix("palm")) for p in prompts)
    assert any("Only" in t and "fits" in t for t in texts)  # rationale targets are learned, prompts are not
    assert corpus.heldout.shape[0] == 2 and all(round(float(w), 4) == 1.0 for w in corpus.heldout_weights.sum(1))


def test_weighted_cross_entropy_is_the_mean_over_examples():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 5, 11, generator=g), torch.randint(0, 11, (2, 5), generator=g)
    w = torch.tensor([[0, 0, 0.5, 0.5, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0]])
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(2, 5)
    expected = (nll[0, 2:4].mean() + nll[1, 1:4].mean()) / 2
    assert torch.allclose(weighted_cross_entropy(logits, targets, w), expected)


def test_train_and_evaluate_a_tiny_student(tmp_path):
    from conftest import tiny_llama

    from compress.checkpoint import load, save
    from compress.rationale.evaluate import evaluate_task
    from compress.rationale.tasks import write_task

    student = save(tiny_llama(seed=1), tmp_path / "student")
    records = mc_records(16)
    cfg = DistillConfig(tokens=4 * 256 * 3, seq_len=256, batch_size=4, lr=1e-3, save_every=1, heldout_fraction=0.1)
    res = train_rationale(student, records, {}, {"palm": 1.0}, tmp_path / "out", cfg, progress=False)
    history = json.loads((res.out / "slimkit.json").read_text())
    stage = history["stages"][-1]
    assert stage["stage"] == "rationale" and stage["config"]["alphas"] == {"palm": 1.0}
    assert stage["config"]["examples"]["explain:palm"] == 15
    with pytest.raises(Exception, match="alphas"):  # a different mix cannot resume this run's checkpoints
        train_rationale(student, records, {}, {"palm": 0.5}, tmp_path / "out", cfg, resume=True, progress=False)
    model, tok = load(res.out)
    result = evaluate_task(model, tok, records[:4])
    assert result["n"] == 4 and 0 <= result["exact_match"] <= 1 and 0 <= result["choice_accuracy"] <= 1
    task = write_task(records[:3], tmp_path / "task.jsonl")
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli", "eval", str(res.out), "--task", str(task), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 3
    bad = subprocess.run([sys.executable, "-m", "slimkit.cli", "eval", str(res.out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--task" in bad.stderr
