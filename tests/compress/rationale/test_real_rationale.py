"""Real rationales: the bundled SmolLM2-135M-Instruct GGUF behind llama.cpp's OpenAI-compatible server explains
three CommonsenseQA answers, with 4 PaLM-rationale examples in the prompt, through `slimkit rationale generate`."""
from __future__ import annotations

import json

import pytest

from compress.rationale.generate import load_rationales
from compress.rationale.tasks import data_root, load_task
from rationale_fixtures import serve_gguf
from slimkit.cli import main
from tests.conftest import zoo_path


@pytest.mark.real
def test_smollm2_server_explains_three_cqa_answers(tmp_path, capsys):
    if not (data_root() / "cqa" / "cqa_train.json.gz").is_file():
        pytest.skip(f"{data_root()} not present (../shared/data is optional)")
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed (extra `rationale`)")
    model = zoo_path("smollm2-135m-instruct")
    out = tmp_path / "smollm2.jsonl"
    # a generous timeout: run at nice 19 beside a benchmark on 2 cores, one of the three records failed with
    # the default 60 s per request (and 2 retries)
    with serve_gguf(model, tmp_path / "server.log") as url:
        code = main(["rationale", "generate", "--task", "cqa", "--limit", "3", "--teacher", f"{url}#smollm2",
                     "--max-tokens", "64", "--concurrency", "2", "--timeout", "600", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records = {r.id: r for r in load_task("cqa", "train", limit=3)}
    print(summary)
    for e in lines:
        print(e["id"][:8], e["consistent"], e["stated_answer"], repr(e["rationale"][:160]))
    assert sorted(e["id"] for e in lines) == sorted(records) and "3 generated" in summary
    texts = [e["rationale"] for e in lines]
    assert len(set(texts)) == 3  # one explanation per question, not a constant
    for e in lines:
        assert e["teacher"] == "smollm2" and len(e["rationale"].split()) >= 5
        assert e["stated_answer"] is None or e["stated_answer"] in records[e["id"]].choices
        # the consistency flag is what the parsed statement says about the gold answer
        assert e["consistent"] == (e["stated_answer"] in (None, records[e["id"]].answer))
    assert set(load_rationales(out)) == {e["id"] for e in lines if e["consistent"]}
