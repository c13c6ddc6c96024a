"""Rationale generation against real HTTP servers: llama.cpp's OpenAI-compatible server on a tiny random GGUF
(resume, cache, concurrency), a stub server that misbehaves (retries, malformed responses, wrong answers),
a port with nothing listening, the in-process llama.cpp source, and the CLI."""
from __future__ import annotations

import json
import time

import pytest

from compress.errors import SlimkitError
from compress.rationale.generate import generate_rationales, load_rationales, read_cache, split_rationale
from compress.rationale.prompts import ExampleSampler, build_prompt
from compress.rationale.sources import LlamaCppSource, OpenAISource, PrecomputedSource, make_source
from compress.rationale.tasks import TaskRecord, write_task
from rationale_fixtures import llama_server, mc_records, stub_server, tiny_gguf  # noqa: F401
from slimkit.cli import main


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_llama_server_generates_resumes_and_skips_cached(llama_server, tmp_path):
    recs = mc_records(8)
    out = tmp_path / "r.jsonl"
    src = OpenAISource(llama_server, "tiny", max_tokens=12, timeout=60)
    rep = generate_rationales(recs[:6], src, out, k_shot=2, concurrency=3, progress=False)
    assert rep.counts() == {"generated": 6, "skipped_cached": 0, "inconsistent": 0, "failed": 0, "empty": 0}
    lines = _lines(out)
    sampler = ExampleSampler(recs[:6], 2, seed=0)
    assert sorted(e["id"] for e in lines) == [r.id for r in recs[:6]]
    for e in lines:
        rec = next(r for r in recs if r.id == e["id"])
        assert e["teacher"] == "tiny" and e["rationale"].strip() and e["consistent"] is True
        assert e["prompt_sha"] == build_prompt(rec, sampler(rec)).sha
    before = out.read_bytes()

    rep = generate_rationales(recs[:6], src, out, k_shot=2, concurrency=3, progress=False)
    assert rep.counts() == {"generated": 0, "skipped_cached": 6, "inconsistent": 0, "failed": 0, "empty": 0}
    assert out.read_bytes() == before  # nothing regenerated

    # lose two lines and cut the last one mid-write, as a crash would: only those three come back
    raw = before.decode().splitlines(keepends=True)
    kept = [raw[0], raw[2], raw[4], raw[5][: len(raw[5]) // 2]]
    out.write_text("".join(kept))
    rep = generate_rationales(recs[:6], src, out, k_shot=2, concurrency=3, progress=False)
    assert rep.counts() == {"generated": 3, "skipped_cached": 3, "inconsistent": 0, "failed": 0, "empty": 0}
    again = _lines(out)  # every line parses: the partial one was cut off first
    assert sorted(e["id"] for e in again) == sorted(e["id"] for e in lines)
    assert {e["id"]: e["prompt_sha"] for e in again} == {e["id"]: e["prompt_sha"] for e in lines}

    rep = generate_rationales(recs, src, out, k_shot=2, concurrency=3, progress=False, teacher_name="tiny")
    assert (rep.generated, rep.skipped_cached) == (2, 6)
    assert set(load_rationales(out)) == {r.id for r in recs}

    plain = OpenAISource(llama_server, "tiny", max_tokens=12, chat=False)  # /v1/completions with the prompt text
    assert plain.generate(build_prompt(recs[0], recs[1:3])).strip()


def test_concurrency_is_real_and_capped(stub_server, tmp_path):
    stub_server.delay = 0.3
    src = OpenAISource(stub_server.url, "stub", max_retries=0)
    rep = generate_rationales(mc_records(8), src, tmp_path / "a.jsonl", k_shot=1, concurrency=4, progress=False)
    assert rep.generated == 8 and 3 <= stub_server.max_inflight <= 4
    stub_server.max_inflight = 0
    rep = generate_rationales(mc_records(3), src, tmp_path / "b.jsonl", k_shot=1, concurrency=1, progress=False)
    assert rep.generated == 3 and stub_server.max_inflight == 1


def test_transient_errors_are_retried_per_record(stub_server, tmp_path):
    stub_server.mode = "flaky"  # 503 on the first request for each prompt
    src = OpenAISource(stub_server.url, "stub", max_retries=0)  # only generate_rationales retries here
    out = tmp_path / "r.jsonl"
    rep = generate_rationales(mc_records(4), src, out, k_shot=1, retries=0, progress=False)
    assert rep.counts() == {"generated": 0, "skipped_cached": 0, "inconsistent": 0, "failed": 4, "empty": 0}
    assert sorted(rep.failed_ids) == ["r0", "r1", "r2", "r3"] and out.read_text() == ""
    stub_server.seen.clear()
    stub_server.requests = 0
    rep = generate_rationales(mc_records(4), src, out, k_shot=1, retries=1, backoff=0.01, progress=False)
    assert rep.counts() == {"generated": 4, "skipped_cached": 0, "inconsistent": 0, "failed": 0, "empty": 0}
    assert stub_server.requests == 8  # each record: one 503, one success


def test_unreachable_url_is_one_line_error(tmp_path, closed_port):
    src = OpenAISource(f"http://127.0.0.1:{closed_port}/v1", "m", max_retries=1, timeout=5)
    out = tmp_path / "r.jsonl"
    t0 = time.monotonic()
    with pytest.raises(SlimkitError) as exc:
        generate_rationales(mc_records(4), src, out, k_shot=1, backoff=0.01, progress=False)
    msg = str(exc.value)
    assert msg.startswith(f"cannot reach http://127.0.0.1:{closed_port}/v1") and "after 1 retries" in msg
    assert "\n" not in msg and time.monotonic() - t0 < 30
    assert read_cache(out) == []


@pytest.mark.parametrize("mode,why", [("bad-json", "malformed response"), ("no-choices", "response has no choices")])
def test_malformed_response_names_the_record(stub_server, tmp_path, mode, why):
    stub_server.mode = mode
    src = OpenAISource(stub_server.url, "stub", max_retries=0)
    with pytest.raises(SlimkitError) as exc:
        generate_rationales(mc_records(2), src, tmp_path / "r.jsonl", k_shot=1, concurrency=1, progress=False)
    msg = str(exc.value)
    assert msg.startswith("record r0: ") and why in msg and "\n" not in msg


def test_completion_mode_checks_the_completion_shape(stub_server, tmp_path):
    src = OpenAISource(stub_server.url, "stub", chat=False)  # the stub answers a chat completion: no choices[0].text
    with pytest.raises(SlimkitError, match="record r0: completion has no choices"):
        generate_rationales(mc_records(2), src, tmp_path / "r.jsonl", k_shot=1, concurrency=1, progress=False)


def test_inconsistent_rationales_kept_counted_and_filtered(stub_server, tmp_path):
    stub_server.mode = "wrong"  # says (c) when the gold answer is (a): 5 of the 8 records
    out = tmp_path / "r.jsonl"
    rep = generate_rationales(mc_records(8), OpenAISource(stub_server.url, "stub"), out, k_shot=2, progress=False)
    assert rep.counts() == {"generated": 8, "skipped_cached": 0, "inconsistent": 5, "failed": 0, "empty": 0}
    lines = {e["id"]: e for e in _lines(out)}
    assert lines["r1"]["consistent"] is False and lines["r1"]["stated_answer"] == "paper"  # (c) of honey/glass/paper
    assert lines["r0"]["consistent"] is True and lines["r0"]["stated_answer"] == "fridge"
    assert lines["r0"]["rationale"] == "Because it is the usual one."  # the answer statement is split off
    assert set(load_rationales(out)) == {"r0", "r2", "r5"}
    assert len(load_rationales(out, include_inconsistent=True)) == 8


def test_answer_without_explanation_is_counted_not_written(stub_server, tmp_path):
    stub_server.mode = "bare"  # "So the answer is (b) fridge." and nothing else
    out = tmp_path / "r.jsonl"
    rep = generate_rationales(mc_records(3), OpenAISource(stub_server.url, "stub"), out, k_shot=1, progress=False)
    assert rep.counts() == {"generated": 0, "skipped_cached": 0, "inconsistent": 0, "failed": 0, "empty": 3}
    assert sorted(rep.empty_ids) == ["r0", "r1", "r2"] and out.read_text() == ""


def test_precomputed_source_and_split():
    recs = mc_records(3)
    src = make_source("file:palm")
    assert isinstance(src, PrecomputedSource) and src.name == "palm"
    assert src.generate(build_prompt(recs[0], []), recs[0]) == "Only fridge fits the question."
    assert split_rationale(recs[0], "Cold keeps milk. Therefore the correct answer is (b) fridge.") == \
        ("Cold keeps milk.", "fridge", True)
    assert split_rationale(recs[0], "x = 5.625 so the answer is (a)") == ("", "oven", False)
    because = "The answer is (b) fridge because a fridge keeps milk cold."  # the statement explains: kept whole
    assert split_rationale(recs[0], because) == (because, "fridge", True)
    assert split_rationale(recs[0], "So the answer is (b) fridge.") == ("", "fridge", True)
    assert split_rationale(recs[0], "The correct answer is: fridge, of course") == ("", "fridge", True)


def test_precomputed_copy_fails_records_without_rationale(tmp_path):
    recs = mc_records(4) + [TaskRecord("nr", "Yes or no?", "yes", ("yes", "no"))]
    rep = generate_rationales(recs, make_source("file:palm"), tmp_path / "p.jsonl", k_shot=1, progress=False)
    assert rep.counts() == {"generated": 4, "skipped_cached": 0, "inconsistent": 0, "failed": 1, "empty": 0}
    assert rep.failed_ids == ["nr"]


def test_make_source_specs(tmp_path):
    src = make_source("http://127.0.0.1:9/v1/#qwen", max_retries=0)
    assert isinstance(src, OpenAISource) and src.model == "qwen" and src.base_url == "http://127.0.0.1:9/v1"
    assert make_source("http://127.0.0.1:9/v1", model="m").name == "m"
    with pytest.raises(SlimkitError, match="name the model"):
        make_source("http://127.0.0.1:9/v1")
    with pytest.raises(SlimkitError, match="not found"):
        make_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(SlimkitError, match="unknown teacher 'gpt-9'"):
        make_source("gpt-9")


def test_llama_cpp_in_process(tiny_gguf, tmp_path):
    src = LlamaCppSource(tiny_gguf, max_tokens=8)
    assert src.name == "tiny-f16" and src.max_concurrency == 1 and src.chat is True  # the GGUF has a template
    assert LlamaCppSource(tiny_gguf, max_tokens=8, chat=False).generate(build_prompt(mc_records(1)[0], [])).strip()
    rep = generate_rationales(mc_records(3), src, tmp_path / "r.jsonl", k_shot=1, concurrency=4, progress=False)
    assert rep.generated == 3 and {e["teacher"] for e in _lines(tmp_path / "r.jsonl")} == {"tiny-f16"}


def test_corrupt_middle_line_is_an_error(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"id": "a", "teacher": "t", "rationale": "x", "consistent": true}\nGARBAGE\n'
                   '{"id": "b", "teacher": "t", "rationale": "y", "consistent": true}\n')
    with pytest.raises(SlimkitError, match="line 2 is not a rationale record"):
        load_rationales(out)
    with pytest.raises(SlimkitError, match="not found"):
        load_rationales(tmp_path / "none.jsonl")


def test_cli_generate_and_bad_input(stub_server, tmp_path, capsys, closed_port):
    task = write_task(mc_records(5), tmp_path / "task.jsonl")
    out = tmp_path / "r.jsonl"
    args = ["rationale", "generate", "--task", str(task), "--k-shot", "2", "-o", str(out)]
    assert main(args + ["--teacher", f"{stub_server.url}#stub"]) == 0
    assert ("5 generated, 0 already there, 0 inconsistent with the gold answer, 0 failed, 0 without an explanation"
            in capsys.readouterr().out)
    assert main(args + ["--teacher", stub_server.url, "--model", "stub", "--limit", "3"]) == 0
    assert "0 generated, 3 already there" in capsys.readouterr().out
    for bad, why in ((["--teacher", f"http://127.0.0.1:{closed_port}/v1#m", "--retries", "0"], "cannot reach"),
                     (["--teacher", "file:palm", "--concurrency", "0"], "--concurrency must be at least 1"),
                     (["--teacher", "file:palm", "--task", str(tmp_path / "nope.jsonl")], "neither a file nor"),
                     (["--teacher", "nonsense"], "unknown teacher")):
        assert main(args + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()  # (a progress bar may stand before the error)
        assert err[-1].startswith("slimkit: error: ") and why in err[-1], err
        assert sum("error" in line for line in err) == 1
    stub_server.mode = "bad-json"
    assert main(args[:-2] + ["-o", str(tmp_path / "r2.jsonl"), "--teacher", f"{stub_server.url}#stub",
                             "--retries", "0", "--concurrency", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("slimkit: error: record r0: ")


def test_text_format_prompts_show_no_letters_and_formats_do_not_mix(tmp_path):
    recs = mc_records(6)
    letter = build_prompt(recs[0], recs[1:3])
    text = build_prompt(recs[0], recs[1:3], answer_format="text")
    assert "(a) " in letter.user and f"({recs[0].letter()}) {recs[0].answer}" in letter.user
    assert "(a) " not in text.user and f"Correct answer: {recs[0].answer}\n" in text.user
    assert all(f"- {c}\n" in text.user for c in recs[0].choices)

    class Echo:   # a teacher that answers what its prompt calls the correct answer
        name, max_concurrency = "echo", 1

        def generate(self, prompt, record=None):
            return f"Because. So the answer is {prompt.user.rsplit('Correct answer: ', 1)[1].splitlines()[0]}."

    out = tmp_path / "r.jsonl"
    rep = generate_rationales(recs, Echo(), out, k_shot=2, progress=False, answer_format="text")
    assert rep.generated == 6 and rep.inconsistent == 0
    assert all(e["answer_format"] == "text" and e["stated_answer"] == r.answer
               for e, r in zip(sorted(_lines(out), key=lambda e: e["id"]), sorted(recs, key=lambda r: r.id)))
    with pytest.raises(SlimkitError, match="text answer format, not letter"):
        generate_rationales(recs, Echo(), out, k_shot=2, progress=False)
