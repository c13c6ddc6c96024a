"""Rationale distillation training (multi-task prefixes, weighted loss) and task evaluation."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest
import torch

from compress.distill.config import DistillConfig
from compress.distill.losses import weighted_cross_entropy
from compress.rationale.train import ANSWER, build_corpus, explain_prefix, train_rationale

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from rationale_fixtures import mc_records, reference_score  # noqa: E402


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


def _reference_greedy(model, prompt, eos, max_new):
    tokens, ids = [], list(prompt)
    with torch.no_grad():
        while len(tokens) < max_new:
            nxt = int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            if nxt in eos:
                break
            tokens.append(nxt)
            ids.append(nxt)
    return tokens


def test_greedy_and_scores_match_plain_decoding_and_scoring():
    """The shared-prompt, batched evaluation gives what one full forward per choice and token-by-token
    greedy decoding without a cache give, both when greedy decoding runs on and when it ends on a choice."""
    from conftest import tiny_llama

    from compress.rationale.evaluate import greedy_and_scores

    model = tiny_llama(seed=3).model.eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 100, (9,), generator=g).tolist()
    free = _reference_greedy(model, prompt, set(), 6)
    targets = [torch.randint(3, 100, (n,), generator=g).tolist() for n in (2, 4, 3)]
    # greedy decoding runs past every target: token-by-token decoding on the cache
    tokens, scores = greedy_and_scores(model, prompt, targets, set(), max_new_tokens=6)
    assert tokens == free and len(free) == 6
    assert scores == pytest.approx([reference_score(model, prompt, t) for t in targets], abs=1e-4)
    # greedy decoding produces the last target, then EOS: the batched scoring pass is the decode
    eos = {free[3]}
    assert free[3] not in free[:3]  # the seed's greedy path: EOS is not reached earlier
    targets.append(free[:3])
    tokens, scores = greedy_and_scores(model, prompt, targets, eos, max_new_tokens=6)
    assert tokens == free[:3] == _reference_greedy(model, prompt, eos, 6)
    assert scores == pytest.approx([reference_score(model, prompt, t) for t in targets], abs=1e-4)
    assert greedy_and_scores(model, prompt, targets, eos, max_new_tokens=3)[0] == free[:3]  # the length cap


def test_trim_padding_keeps_the_loss_and_drops_only_unweighted_columns():
    from conftest import tiny_llama

    from compress.distill.objective import DistillModule, compute_loss
    from compress.distill.order import trim_padding

    tok = _tok()
    corpus, _ = build_corpus(mc_records(8), {}, {"palm": 1.0}, tok, seq_len=256, heldout_fraction=0)
    ids, w = corpus.train[:4], corpus.train_weights[:4]
    short_ids, short_w = trim_padding(ids, w)
    last = max(int(row.nonzero()[-1]) for row in w)
    assert short_ids.shape[1] == last + 1 < 256 and torch.equal(short_ids, ids[:, :last + 1])
    module = DistillModule(tiny_llama(seed=2).model, [])
    full = compute_loss(module, [], ids, [], 1.0, 0, contextlib.nullcontext, w).total
    trimmed = compute_loss(module, [], short_ids, [], 1.0, 0, contextlib.nullcontext, short_w).total
    assert float(trimmed.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    assert trim_padding(ids[:1, :4], torch.zeros(1, 4))[0].shape == (1, 1)  # nothing weighted: one column
