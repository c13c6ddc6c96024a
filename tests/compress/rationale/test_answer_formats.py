"""Answer formats (compress.rationale.formats): in the text format the student learns a choice's words, not a
letter bound to it, and evaluation ranks the choices by those words (mean log-likelihood per token)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compress.errors import SlimkitError
from compress.rationale.formats import (answer_target, choice_score, choice_targets, greedy_correct,
                                        trained_format)
from compress.rationale.tasks import ESNLI_LABELS, TaskRecord, data_root, load_task
from compress.rationale.train import answer_prompt, build_corpus

sys.path.insert(0, str(Path(__file__).parent))
from rationale_fixtures import mc_records, reference_score  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
NLI = TaskRecord("e1", "The sisters hug.", "neutral", ESNLI_LABELS, context="Two women embrace.")


def _tok():
    from conftest import tiny_tokenizer

    return tiny_tokenizer()


def _targets_and_prompts(corpus, tok) -> list[tuple[str, str]]:
    """(decoded target tokens, decoded prompt) of every training window: the target is what carries weight."""
    out = []
    for ids, w in zip(corpus.train, corpus.train_weights):
        first = int((w > 0).nonzero()[0])
        out.append((tok.decode(ids[w > 0]), tok.decode(ids[:first])))
    return out


def test_text_format_learns_the_choice_words():
    tok = _tok()
    records = mc_records(8) + [NLI]
    corpus, counts = build_corpus(records, {}, {}, tok, seq_len=256, heldout_fraction=0, answer_format="text")
    assert counts["answer"] == 9 and counts["too_long"] == 0
    pairs = _targets_and_prompts(corpus, tok)
    # the loss is on the choice's text (then EOS), e-SNLI's on the label word; every example's weights sum to 1
    assert sorted(t for t, _ in pairs) == sorted(f" {r.answer}{tok.eos_token}" for r in records)
    assert all(abs(float(w.sum()) - 1) < 1e-5 for w in corpus.train_weights)
    prompts = [p for _, p in pairs]
    assert all("(a)" not in p and "(b)" not in p for p in prompts)  # no letter anywhere to bind to
    assert any(p.endswith("Answer Choices: oven, fridge, desk\nAnswer:") for p in prompts)
    assert any(p.endswith("Answer Choices: entailment, neutral, contradiction\nAnswer:") for p in prompts)
    letter, _ = build_corpus(records, {}, {}, tok, seq_len=256, heldout_fraction=0)  # today's format, unchanged
    assert sorted(t for t, _ in _targets_and_prompts(letter, tok)) == sorted(
        f" ({'abc'[r.choices.index(r.answer)]}) {r.answer}{tok.eos_token}" for r in records)
    assert answer_prompt(records[0]) == ("[answer] Question: Where would you keep milk cold?\n"
                                         "Answer Choices: (a) oven (b) fridge (c) desk\nAnswer:")


def test_format_helpers():
    assert answer_target(NLI, "text") == "neutral" and answer_target(NLI, "letter") == "(b) neutral"
    assert choice_targets(NLI, "text") == list(ESNLI_LABELS)
    assert choice_targets(NLI, "letter") == ["(a) entailment", "(b) neutral", "(c) contradiction"]
    assert choice_score(-6.0, 3, "text") == -2.0 and choice_score(-6.0, 3, "letter") == -6.0
    # text: the first line is the choice's text up to case, whitespace and punctuation; a letter is not it
    assert greedy_correct(NLI, "  Neutral.\nContext: more", "text") and not greedy_correct(NLI, "(b)", "text")
    assert not greedy_correct(NLI, "neutral or contradiction", "text") and greedy_correct(NLI, "(b)", "letter")
    open_q = TaskRecord("n", "84 / 2?", "42")
    assert greedy_correct(open_q, "The answer is 42.", "text")  # open answers: the same parser in both formats
    with pytest.raises(SlimkitError, match="unknown answer format 'word'; choose letter or text"):
        build_corpus(mc_records(2), {}, {}, _tok(), seq_len=256, answer_format="word")


def test_text_student_is_scored_by_words_where_letter_scoring_disagrees(tmp_path):
    """A tiny student trained in the text format learns the answers' words; scoring its choices by their
    words (mean log-likelihood per token) finds every answer, while letter-bound scoring of the same
    model (" (x) word" summed, after the lettered prompt) picks other choices."""
    from conftest import tiny_llama

    from compress.checkpoint import load, save
    from compress.distill.config import DistillConfig
    from compress.evaluate import adds_bos
    from compress.rationale.evaluate import _eos_ids, _ids, answer_and_choice_scores, evaluate_task
    from compress.rationale.train import train_rationale

    student = save(tiny_llama(seed=1), tmp_path / "student")
    records = mc_records(16)  # the 8 questions twice (ids differ): the held-out record's question is learned too
    cfg = DistillConfig(tokens=60 * 8 * 128, seq_len=128, batch_size=8, lr=3e-3, heldout_fraction=0.1, seed=0)
    res = train_rationale(student, records, {}, {}, tmp_path / "out", cfg, progress=False, answer_format="text")
    stage = json.loads((res.out / "slimkit.json").read_text())["stages"][-1]
    assert stage["config"]["answer_format"] == "text"
    model, tok = load(res.out)
    assert trained_format(model) == "text" and trained_format(tiny_llama(seed=1).model) == "letter"
    questions = records[:8]
    text = evaluate_task(model, tok, questions)  # the format the checkpoint was trained in
    letter = evaluate_task(model, tok, questions, answer_format="letter")
    assert text["answer_format"] == "text" and "mean" in text["choice_score"]
    assert text["choice_accuracy"] == 1.0 and text["exact_match"] == 1.0
    assert letter["answer_format"] == "letter" and letter["choice_accuracy"] < 1.0
    bos, eos = adds_bos(tok), _eos_ids(model, tok)
    disagree = 0
    for r in questions:
        picks = {}
        for fmt in ("text", "letter"):
            _, scores = answer_and_choice_scores(model, tok, r, bos, 8, eos, fmt)
            prompt = _ids(tok, answer_prompt(r, fmt), bos)
            targets = [tok(" " + t, add_special_tokens=False)["input_ids"] for t in choice_targets(r, fmt)]
            expected = [choice_score(reference_score(model, prompt, t), len(t), fmt) for t in targets]
            assert scores == pytest.approx(expected, abs=1e-4)
            picks[fmt] = max(range(len(scores)), key=scores.__getitem__)
        disagree += picks["text"] != picks["letter"]
        assert r.choices[picks["text"]] == r.answer
    assert disagree >= 1


def test_cli_answer_format_flag(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "slimkit.cli", "rationale", "train", "x", "--task", "cqa", "-o",
                          str(tmp_path / "o"), "--tokens", "10", "--answer-format", "word"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--answer-format" in bad.stderr and "letter" in bad.stderr


def test_esnli_records_in_the_text_format():
    if not (data_root() / "esnli" / "esnli_test.json.gz").is_file():
        pytest.skip(f"{data_root()} not present (../shared/data is optional)")
    records = load_task("esnli", "test", limit=50).records
    assert {r.answer for r in records} <= set(ESNLI_LABELS) and len({r.answer for r in records}) == 3
    assert all(choice_targets(r, "text") == list(ESNLI_LABELS) and answer_target(r, "text") == r.answer
               for r in records)
