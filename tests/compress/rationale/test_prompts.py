"""Teacher-forced prompts: gold answer in the prompt, K seeded in-context examples, configurable templates."""
from __future__ import annotations

import pytest

from compress.errors import SlimkitError
from compress.rationale.prompts import ExampleSampler, PromptTemplate, build_prompt
from compress.rationale.tasks import TaskRecord
from rationale_fixtures import mc_records


def test_prompt_has_gold_answer_and_k_examples():
    recs = mc_records(8)
    sampler = ExampleSampler(recs, k=3, seed=0)
    target = recs[0]
    examples = sampler(target)
    assert len(examples) == 3 and target not in examples and len({e.id for e in examples}) == 3
    p = build_prompt(target, examples)
    assert "Explain step by step" in p.system
    blocks = p.user.split("\n\n")
    assert len(blocks) == 4  # 3 examples, then the query
    for ex, block in zip(examples, blocks):  # each example: question, choices, answer, its palm rationale
        assert block.startswith(f"Q: {ex.question}\nAnswer Choices:\n(a) {ex.choices[0]}\n")
        assert f"Correct answer: ({ex.letter()}) {ex.answer}\n" in block
        assert f"Explanation: {ex.rationales['palm']} So the answer is ({ex.letter()}) {ex.answer}." in block
    assert blocks[-1] == ("Q: Where would you keep milk cold?\nAnswer Choices:\n(a) oven\n(b) fridge\n(c) desk\n"
                          "Correct answer: (b) fridge\nExplanation:")
    assert target.rationales["palm"] not in blocks[-1]  # the record's own rationale is never shown


def test_examples_are_seeded_per_record():
    recs = mc_records(8)
    a = ExampleSampler(recs, k=2, seed=1)
    b = ExampleSampler(list(reversed(recs)), k=2, seed=1)  # another order of the pool
    assert [e.id for e in a(recs[3])] == [e.id for e in a(recs[3])]
    assert {e.id for e in a(recs[3])} == {e.id for e in b(recs[3])}
    draws = {tuple(e.id for e in ExampleSampler(recs, k=2, seed=s)(recs[3])) for s in range(8)}
    assert len(draws) > 1  # the seed matters
    assert ExampleSampler(recs, k=0)(recs[0]) == []
    with pytest.raises(SlimkitError, match="need more than 8 example records"):
        ExampleSampler(recs, k=8)


def test_examples_prefer_records_with_rationales():
    recs = mc_records(6, with_rationales=False) + [TaskRecord(f"x{i}", "q?", "y", ("y", "n"), rationales={"palm": "r"})
                                                  for i in range(3)]
    drawn = ExampleSampler(recs, k=2, seed=0)(recs[0])
    assert all(e.id.startswith("x") for e in drawn)
    plain = ExampleSampler(mc_records(6, with_rationales=False), k=2)(recs[0])  # none has one: plain examples
    assert len(plain) == 2 and "Explanation: " not in build_prompt(recs[0], plain).user.replace("Explanation:", "", 1)


def test_open_and_context_records():
    num = TaskRecord("n1", "84 points in 2 rounds; per round?", "42")
    nli = TaskRecord("e1", "The sisters hug.", "neutral", ("entailment", "neutral", "contradiction"), context="Two women.")
    assert "Correct answer: 42\nExplanation:" in build_prompt(num, []).user
    assert build_prompt(nli, []).user.startswith("Context: Two women.\nQ: The sisters hug.\n")


def test_template_from_file_and_bad_templates(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text('question: "Question: {question}\\n"\nanswer: "Gold: {answer}\\n"\nsystem: ""\n')
    t = PromptTemplate.from_file(path)
    p = build_prompt(mc_records(1)[0], [], t)
    assert p.system == "" and p.text == p.user and p.user.startswith("Question: Where would you keep milk cold?")
    assert "Gold: (b) fridge\n" in p.user
    assert p.sha != build_prompt(mc_records(1)[0], []).sha
    path.write_text("question: 'Q: {question} {answerr}'\n")
    with pytest.raises(SlimkitError, match=r"'question' uses \{answerr\}"):
        PromptTemplate.from_file(path)
    path.write_text("questions: 'x'\n")
    with pytest.raises(SlimkitError, match="unknown prompt template part 'questions'"):
        PromptTemplate.from_file(path)
    with pytest.raises(SlimkitError, match="cannot read prompt template"):
        PromptTemplate.from_file(tmp_path / "missing.yaml")
