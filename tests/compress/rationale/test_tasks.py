"""Task schema, the bundled Distilling Step-by-Step loaders (../shared/data/rationale), user files, answer parsing."""
from __future__ import annotations

import json

import pytest

from compress.errors import SlimkitError
from compress.rationale.tasks import (TaskRecord, answer_matches, contradicts, data_root, eval_arithmetic, load_task,
                                      parse_answer, parse_palm_output, write_task)


def _need_data():
    if not (data_root() / "cqa" / "cqa_train.json.gz").is_file():
        pytest.skip(f"{data_root()} not present (../shared/data is optional)")


@pytest.mark.parametrize("name,split,n,n_problems", [("cqa", "train", 9741, 0), ("cqa", "test", 1221, 0),
                                                     ("svamp", "train", 800, 11), ("svamp", "test", 200, 2),
                                                     ("esnli", "train", 9842, 4)])
def test_builtin_counts_and_problems(name, split, n, n_problems):
    _need_data()
    data = load_task(name, split)
    assert len(data) == n and data.counts["records"] == n
    # every record is kept; those whose PaLM output has no answer statement lose only their palm rationale
    assert len(data.problems) == n_problems == data.counts["problems"]
    assert data.counts["palm_rationales"] == n - n_problems
    bad = {p.id for p in data.problems}
    assert all("PaLM output" in p.reason for p in data.problems)
    assert all((r.rationales is None) == (r.id in bad) for r in data.records)
    assert len({r.id for r in data.records}) == n
    assert 0 < data.counts["palm_disagrees_with_gold"] < n // 2  # PaLM is right most of the time


def test_builtin_fields_mapped():
    _need_data()
    cqa = load_task("cqa", "train").records[0]
    assert cqa.id == "6b819727eb8a670df26a7ffad036c119" and cqa.answer == "math problem"
    assert cqa.choices == ("park", "coloring book", "garden center", "math problem", "gravity") and cqa.kind == "choice"
    # cut at 'Q:' and at 'So the answer is': the rationale alone, no run-on into the next few-shot example
    assert cqa.rationales["palm"].endswith("only math problem has to do with the above problem.")
    assert all("So the answer is" not in r.rationales["palm"] and "Q:" not in r.rationales["palm"]
               for r in load_task("cqa", "test").records)
    sv = load_task("svamp", "train").records[0]
    assert sv.answer == "42" and sv.choices is None and sv.kind == "number"  # ( 84.0 / 2.0 )
    assert sv.rationales["palm"].endswith("84 / 2 = 42.")
    es = load_task("esnli", "train").records[0]  # premise -> context, hypothesis -> question, label 1 -> neutral
    assert es.context == "Two women are embracing while holding to go packages."
    assert es.question.startswith("The sisters are hugging goodbye") and es.answer == "neutral"
    assert es.choices == ("entailment", "neutral", "contradiction")
    assert es.rationales["palm"] == "The to go packages are not necessarily from lunch."
    assert len(load_task("esnli", "test")) == 9824 and len(load_task("cqa", "test", limit=5)) == 5


def test_builtin_bad_split_and_unknown_task():
    with pytest.raises(SlimkitError, match="has no split 'dev'"):
        load_task("cqa", "dev")
    with pytest.raises(SlimkitError, match="neither a file nor one of cqa, svamp, esnli"):
        load_task("no-such-task")


def test_palm_output_parsing():
    assert parse_palm_output("cqa", "Bums sleep there. So the answer is (d) bridge.\n\nQ: next one") == \
        ("Bums sleep there.", "(d) bridge")
    assert parse_palm_output("svamp", "84 / 2 = 42. The answer is (84 / 2).\n\nQ: more") == ("84 / 2 = 42.", "(84 / 2)")
    assert parse_palm_output("esnli", "Not said.\nAnswer: neutral\n\nPremise: x") == ("Not said.", "neutral")
    assert parse_palm_output("cqa", "It rambles on without ever answering") is None
    assert parse_palm_output("esnli", "no label here") is None


def test_user_file_bad_records_reported(tmp_path):
    good = {"id": "a", "question": "2+2?", "choices": None, "answer": "4", "context": None, "rationales": None}
    rows = [good,
            {"id": "b", "question": "Color of sky?", "choices": ["blue", "green"], "answer": "red"},
            {"id": "c", "question": "No answer here"},
            {"id": "a", "question": "dup", "answer": "x"},
            {"question": "no id", "answer": "x"},
            {"id": "d", "question": "Q?", "answer": "yes", "rationales": {"t1": "because"}, "context": "ctx"}]
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    data = load_task(path)
    assert [r.id for r in data.records] == ["a", "d"]
    reasons = {p.id: p.reason for p in data.problems}
    assert "is not one of the choices" in reasons["b"] and "missing or empty 'answer'" in reasons["c"]
    assert "duplicate id" in reasons["a"] and "missing 'id'" in reasons["#5"]
    assert data.counts == {"records": 2, "problems": 4}
    d = data.records[1]
    assert d.rationales == {"t1": "because"} and d.context == "ctx" and d.kind == "text"
    # the schema round-trips
    out = write_task(data.records, tmp_path / "out.jsonl")
    assert load_task(out).records == data.records


def test_user_file_malformed_json_names_the_record(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text('{"id": "ok1", "question": "q", "answer": "a"}\n{"id": "broken7", "question": "q", "answer": \n')
    with pytest.raises(SlimkitError) as exc:
        load_task(path)
    msg = str(exc.value)
    assert "'broken7' (line 2) is not valid JSON" in msg and "\n" not in msg
    path.write_text("not json at all\n")
    with pytest.raises(SlimkitError, match="line 1 is not valid JSON"):
        load_task(path)
    path.write_text("\n\n")
    with pytest.raises(SlimkitError, match="holds no records"):
        load_task(path)


MC = TaskRecord("m", "Where do bums live?", "bridge", ("bus depot", "beach", "train station", "bridge", "bridge"))
NUM = TaskRecord("n", "84 points in 2 rounds, per round?", "42")
NLI = TaskRecord("e", "The sisters hug.", "neutral", ("entailment", "neutral", "contradiction"), context="Two women.")


@pytest.mark.parametrize("record,text,parsed", [
    (MC, "So the answer is (d) bridge.", "bridge"),
    (MC, "So the answer is (c) train station.", "train station"),
    (MC, "(d)", "bridge"),
    (MC, "d", "bridge"),
    (MC, "Bridge", "bridge"),
    (MC, "beach, obviously", "beach"),
    (MC, "The answer is either (a) bus depot or (b) beach.", None),
    (MC, "The answer is a mystery", None),
    (NUM, "84 / 2 = 42. The answer is (84 / 2).", "42"),
    (NUM, "The answer is $1,250.", "1250"),
    (NUM, "41.5 points", "41.5"),
    (NUM, "no digits", None),
    (NLI, "Sisters are not stated.\nAnswer: neutral", "neutral"),
    (NLI, "contradiction", "contradiction"),
])
def test_parse_answer(record, text, parsed):
    assert parse_answer(record, text) == parsed
    assert answer_matches(record, text) == (parsed == record.answer)


def test_contradiction_needs_an_explicit_statement():
    assert contradicts(MC, "Beaches are cold at night. So the answer is (b) beach.")
    assert not contradicts(MC, "Bums are found under bridges. So the answer is (d) bridge.")
    assert not contradicts(MC, "Not the beach and not the train station.")  # no statement: nothing contradicted
    assert contradicts(NUM, "The answer is 43") and not contradicts(NUM, "The answer is 42.0")
    assert eval_arithmetic("( 84.0 / 2.0 )") == 42.0 and eval_arithmetic("__import__('os')") is None
    assert eval_arithmetic("1 / 0") is None


def _damaged_esnli_copy(root, n: int = 20):
    """The first N e-SNLI valid records and their PaLM outputs, copied under ROOT/esnli, three records damaged:
    #3 a label that is no e-SNLI label, #5 no hypothesis, #7 a line that is not JSON; and #9's PaLM output has
    no answer statement."""
    import gzip

    src = data_root() / "esnli"
    lines = gzip.open(src / "esnli_valid.json.gz", "rt", encoding="utf-8").read().splitlines()[:n]
    outputs = json.loads(gzip.open(src / "llm" / "valid_CoT_0.json.gz", "rt", encoding="utf-8").read())[:n]
    rows = [json.loads(line) for line in lines]
    rows[3]["label"] = 7
    del rows[5]["hypothesis"]
    text = [json.dumps(r) for r in rows]
    text[7] = text[7][:40]  # cut short, as a damaged download would be
    outputs[9] = "The hypothesis restates the premise, and that is all."
    (root / "esnli" / "llm").mkdir(parents=True)
    with gzip.open(root / "esnli" / "esnli_valid.json.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(text) + "\n")
    with gzip.open(root / "esnli" / "llm" / "valid_CoT_0.json.gz", "wt", encoding="utf-8") as f:
        json.dump(outputs, f)


def test_esnli_bad_records_reported_by_id(tmp_path, monkeypatch):
    if not (data_root() / "esnli" / "esnli_valid.json.gz").is_file():
        pytest.skip(f"{data_root()} not present (../shared/data is optional)")
    _damaged_esnli_copy(tmp_path)
    monkeypatch.setenv("SLIMKIT_RATIONALE_DATA", str(tmp_path))
    data = load_task("esnli", "train")
    reasons = {p.id: p.reason for p in data.problems}
    assert reasons["esnli-valid-3"] == "label 7 is not 0, 1 or 2"
    assert reasons["esnli-valid-5"] == "missing or empty 'question'"
    assert reasons["esnli-valid-7"].startswith("not valid JSON")
    assert reasons["esnli-valid-9"].startswith("PaLM output has no answer statement")
    assert len(reasons) == 4 and all("\n" not in str(p) for p in data.problems)
    # the bad records are left out; #9 is kept without a palm rationale; the others keep their own rationale
    ids = [r.id for r in data.records]
    assert len(ids) == 17 and not {"esnli-valid-3", "esnli-valid-5", "esnli-valid-7"} & set(ids)
    by_id = {r.id: r for r in data.records}
    assert by_id["esnli-valid-9"].rationales is None
    assert by_id["esnli-valid-0"].rationales["palm"] == "The to go packages are not necessarily from lunch."
    assert data.counts["palm_rationales"] == 16
    # a damaged PaLM file is one line naming it
    (tmp_path / "esnli" / "llm" / "valid_CoT_0.json.gz").write_bytes(
        __import__("gzip").compress(b'["cut short'))
    with pytest.raises(SlimkitError, match=r"valid_CoT_0.json.gz is not valid JSON .*restore it"):
        load_task("esnli", "train")


def test_missing_data_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMKIT_RATIONALE_DATA", str(tmp_path))
    with pytest.raises(SlimkitError, match="esnli_valid.json.gz not found: the bundled tasks need"):
        load_task("esnli", "train")
