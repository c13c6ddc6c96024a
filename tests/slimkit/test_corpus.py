"""`slimkit corpus`: a seeded, deduplicated, resumable corpus sampled from a teacher in llama.cpp."""
from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from compress.errors import SlimkitError  # noqa: E402
from slimkit.corpus import CorpusConfig, write_corpus  # noqa: E402


@pytest.fixture(scope="module")
def teacher_gguf(tmp_path_factory):
    from conftest import tiny_llama

    from export.gguf.writer import export_gguf

    path = tmp_path_factory.mktemp("corpus") / "teacher.gguf"
    export_gguf(tiny_llama(0), path, "F32", validate=False)
    return path


def test_corpus_is_seeded_deduplicated_and_resumes(teacher_gguf, tmp_path):
    cfg = CorpusConfig(tokens=400, max_tokens=40, min_tokens=4, seed=3, threads=1)
    whole = write_corpus(str(teacher_gguf), tmp_path / "a.txt", cfg, progress=False, log=lambda m: None)
    text = (tmp_path / "a.txt").read_text()
    docs = [d for d in text.split("\n\n") if d.strip()]
    assert whole["tokens"] >= 400 and len(docs) == whole["documents"]
    assert len({" ".join(d.split()) for d in docs}) == len(docs)   # no duplicates
    # a smaller budget with the same seed is a prefix of the same documents
    write_corpus(str(teacher_gguf), tmp_path / "b.txt", CorpusConfig(**{**cfg.__dict__, "tokens": 120}),
                 progress=False, log=lambda m: None)
    part = (tmp_path / "b.txt").read_text()
    assert text.startswith(part.rstrip("\n"))
    assert not (tmp_path / "b.txt.partial").exists()
    with pytest.raises(SlimkitError, match="temperature"):
        CorpusConfig(tokens=10, temperature=0)


def test_an_interrupted_corpus_resumes_where_it_stopped(teacher_gguf, tmp_path, monkeypatch):
    import slimkit.corpus as corpus

    cfg = CorpusConfig(tokens=300, max_tokens=40, min_tokens=4, seed=5, threads=1)
    write_corpus(str(teacher_gguf), tmp_path / "ref.txt", cfg, progress=False, log=lambda m: None)
    real = corpus._digest
    n = {"calls": 0}

    def crash(text):
        n["calls"] += 1
        if n["calls"] == 4:
            raise KeyboardInterrupt
        return real(text)
    monkeypatch.setattr(corpus, "_digest", crash)
    with pytest.raises(KeyboardInterrupt):
        write_corpus(str(teacher_gguf), tmp_path / "c.txt", cfg, progress=False, log=lambda m: None)
    assert (tmp_path / "c.txt.partial").is_file() and not (tmp_path / "c.txt").exists()
    monkeypatch.setattr(corpus, "_digest", real)
    with pytest.raises(SlimkitError, match="other settings"):
        write_corpus(str(teacher_gguf), tmp_path / "c.txt", CorpusConfig(**{**cfg.__dict__, "seed": 6}),
                     progress=False, log=lambda m: None)
    write_corpus(str(teacher_gguf), tmp_path / "c.txt", cfg, progress=False, log=lambda m: None)
    assert (tmp_path / "c.txt").read_text() == (tmp_path / "ref.txt").read_text()


def test_sample_token_follows_the_truncated_distribution():
    import numpy as np

    from export.runtime import sample_token

    logits = np.log(np.array([0.5, 0.25, 0.125, 0.0625, 0.0625], dtype=np.float32))
    rng = np.random.default_rng(0)
    n = 20000
    full = np.bincount([sample_token(logits, rng) for _ in range(n)], minlength=5) / n
    assert np.abs(full - np.exp(logits)).max() < 0.015           # ~4 standard errors at n=20000
    top2 = np.bincount([sample_token(logits, rng, top_k=2) for _ in range(n)], minlength=5) / n
    assert top2[2:].sum() == 0 and abs(top2[0] - 2 / 3) < 0.015
    nucleus = np.bincount([sample_token(logits, rng, top_p=0.7) for _ in range(n)], minlength=5) / n
    assert nucleus[2:].sum() == 0 and abs(nucleus[0] - 2 / 3) < 0.015   # 0.5 < 0.7 <= 0.75: two tokens
    cold = np.bincount([sample_token(logits, rng, temperature=0.05) for _ in range(2000)], minlength=5)
    assert cold[0] == 2000


def test_batched_sequences_sample_what_one_at_a_time_samples(teacher_gguf):
    """A sequence's tokens depend on its seed, not on the slot or the company it ran in."""
    import numpy as np

    from export.runtime import BatchedGenerator, LlamaRunner

    runner = LlamaRunner(teacher_gguf, n_ctx=64, threads=1)
    prompts = [[runner.bos_id] + runner.tokenize(t) for t in ("", "Once upon", "The robot", "a", "two", "")]

    def run(slots):
        gen = BatchedGenerator(runner, slots=slots, max_len=64, threads=1)
        try:
            jobs = ((i, p, np.random.default_rng(100 + i)) for i, p in enumerate(prompts))
            return dict(gen.generate(jobs, max_tokens=24))
        finally:
            gen.close()

    try:
        one, many = run(1), run(4)
    finally:
        runner.close()
    assert sorted(one) == sorted(many) == list(range(len(prompts)))
    assert all(0 < len(v) <= 24 for v in one.values())
    assert one == many
