"""The bundled Qwen2.5-Coder-0.5B-Instruct (qwen2 family, 494M parameters, from its six chunk
packages) through the spine: GGUF in -> torch -> F16 GGUF out validated in llama.cpp, ONNX int4
validated in ONNX Runtime, and a 25% prune exported to Q4_0. Slow: loading and validating a 0.5B
model takes minutes on two cores."""
from __future__ import annotations

import copy
import json

import pytest

pytest.importorskip("llama_cpp")

from compress.checkpoint import load  # noqa: E402
from export.gguf.writer import export_gguf  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]
NAME = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def qwen():
    from conftest import zoo_path

    zoo_path(NAME)   # skips when the chunk packages are not installed
    return load(NAME)


def test_qwen_loads_as_qwen2_with_its_chat_tokens(qwen):
    tok, cfg = qwen.tokenizer, qwen.model.config
    assert qwen.family == "qwen2" and cfg.num_hidden_layers == 24 and cfg.hidden_size == 896
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_qwen_f16_reexport_is_validated(qwen, tmp_path):
    v = export_gguf(qwen, tmp_path / "q.f16.gguf", "F16").validation
    assert v["passed"] and v["top1_agreement"] >= 0.99 and v["mean_kl"] < 1e-3, v


def test_qwen_onnx_int4_is_validated(qwen, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from export.onnx.export import export_onnx

    out = export_onnx(qwen, tmp_path / "onnx", "int4").path
    v = json.loads((out / "validation.json").read_text())
    assert v["passed"] and v["tokenizer_identical"], v


@pytest.mark.xfail(strict=True, reason="open (issue 19): the 25% magnitude prune (hidden 768, ffn 4224, 12 heads) "
                   "exports to F32 within 0.0065 of torch, but at Q4_0 llama.cpp differs from torch running the "
                   "file's own values with ggml's Q8_0 activation rounding (export.gguf.reference) by 0.46 of max "
                   "|logit|, mean KL 0.21, top-1 0.66 (gate 0.068 / 0.0062 / 0.894), although the dense Qwen passes")
def test_qwen_pruned_by_25_percent_exports_to_q4_0(qwen, tmp_path):
    from compress.prune import PruneConfig, prune

    res = prune(copy.deepcopy(qwen), PruneConfig(method="magnitude", target_params=0.75), progress=False)
    assert 0.2 <= res.plan.removed_fraction <= 0.3
    v = export_gguf(res.checkpoint, tmp_path / "p.q4_0.gguf", "Q4_0").validation
    assert v["passed"], v
