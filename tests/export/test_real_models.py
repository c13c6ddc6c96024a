"""The bundled models through the whole spine: GGUF in -> torch -> GGUF out, validated."""
from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from compress.checkpoint import load  # noqa: E402
from compress.evaluate import torch_perplexity  # noqa: E402
from export.gguf.writer import export_gguf  # noqa: E402
from export.runtime import gguf_perplexity  # noqa: E402
from export.validate import VALIDATION_TEXT  # noqa: E402

pytestmark = pytest.mark.real


def _load(name: str):
    from conftest import zoo_path

    zoo_path(name)  # skips when the zoo package is not installed
    return load(name)


@pytest.fixture(scope="module")
def smollm2():
    return _load("smollm2-135m-instruct")


def test_smollm2_q8_0_and_eval(smollm2, tmp_path):
    out = tmp_path / "s.q8_0.gguf"
    v = export_gguf(smollm2, out, "Q8_0").validation
    assert v["passed"] and v["stored"]["top1_agreement"] >= 0.9 and v["top1_agreement"] >= 0.9
    text = VALIDATION_TEXT * 6
    t = torch_perplexity(smollm2.model, smollm2.tokenizer, text, ctx=256, max_chunks=2)
    g = gguf_perplexity(out, text, ctx=256, max_chunks=2)
    assert t.tokens_scored == g.tokens_scored == 2 * 255
    assert g.ppl == pytest.approx(t.ppl, rel=0.05)


def test_smollm2_tokenizer_and_config_are_right(smollm2):
    tok, cfg = smollm2.tokenizer, smollm2.model.config
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


def test_gemma3_f16_roundtrip(tmp_path):
    ckpt = _load("gemma3-270m")
    assert ckpt.family == "gemma3" and ckpt.tokenizer.bos_token == "<bos>"
    v = export_gguf(ckpt, tmp_path / "g.f16.gguf", "F16").validation
    assert v["passed"] and v["top1_agreement"] >= 0.99 and v["mean_kl"] < 1e-3


def test_gguf_conversion_is_cached(smollm2):
    import time

    assert smollm2.path is not None and smollm2.path.parent.name == "gguf"  # converted once, then cached
    t = time.perf_counter()
    again = load("smollm2-135m-instruct")
    assert time.perf_counter() - t < 15
    assert again.path == smollm2.path
