"""The families beyond llama/gemma3 (qwen2, qwen3, mistral) and Llama 3.1's RoPE scaling: a tiny
random model is loaded from a HF directory, pruned in width and depth (biases and q/k norms follow
the kept heads), and exported to GGUF (F32, F16, Q8_0, Q4_0) and ONNX (fp32, int4), each validated
in its runtime; a GGUF without Llama 3's rope_freqs is caught by validation."""
from __future__ import annotations

import copy

import pytest

pytest.importorskip("llama_cpp")

from compress.checkpoint import load, save  # noqa: E402
from compress.prune import PruneConfig, prune  # noqa: E402
from conftest import prune_shape, tiny_llama3, tiny_mistral, tiny_qwen2, tiny_qwen3  # noqa: E402
from export.gguf.writer import export_gguf  # noqa: E402

MODELS = {"qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "mistral": tiny_mistral, "llama3-rope": tiny_llama3}


@pytest.fixture(scope="module", params=sorted(MODELS))
def pruned_dir(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    save(MODELS[request.param](), root / "dense")
    ckpt = load(root / "dense")                       # from a HF directory, as a user's checkpoint
    res = prune(copy.deepcopy(ckpt), PruneConfig(method="magnitude", shape=prune_shape("llama"), align=8),
                progress=False)
    save(res.checkpoint, root / "pruned", stage=res.stage)
    return request.param, root


@pytest.mark.parametrize("gtype", ["F32", "F16", "Q8_0", "Q4_0"])
def test_pruned_model_exports_to_validated_gguf(pruned_dir, gtype):
    name, root = pruned_dir
    for which in ("dense", "pruned"):
        res = export_gguf(load(root / which), root / f"{which}-{gtype}.gguf", gtype)
        assert res.validation["passed"], (name, which, res.validation)
        if gtype == "F32":
            assert res.validation["max_abs_diff"] < 1e-3, res.validation


def test_pruned_model_loads_back_from_its_gguf(pruned_dir, tmp_path):
    """A GGUF of every family is also an input: loading the pruned model's F32 file back gives its
    logits (Qwen3's head size and Llama 3's RoPE scaling are not in transformers' GGUF config)."""
    import torch

    from compress.checkpoint import load_gguf

    name, root = pruned_dir
    ref = load(root / "pruned")
    path = tmp_path / f"{name}.gguf"
    export_gguf(ref, path, "F32", validate=False)
    back = load_gguf(path)
    ids = torch.tensor([[1, 5, 9, 20, 33, 7, 64, 3]])
    with torch.no_grad():
        diff = (back.model(ids).logits - ref.model(ids).logits).abs().max().item()
    assert diff < 1e-4, (name, diff)


def test_pruned_model_exports_to_validated_onnx(pruned_dir):
    pytest.importorskip("onnxruntime_genai")
    import json

    from export.onnx.export import export_onnx

    name, root = pruned_dir
    for precision in ("fp32", "int4"):
        out = export_onnx(root / "pruned", root / f"onnx-{precision}", precision).path
        v = json.loads((out / "validation.json").read_text())
        assert v["passed"], (name, precision, v)


def test_llama3_rope_factors_are_what_validation_needs(tmp_path, monkeypatch):
    from export.gguf.arch.llama import Llama

    monkeypatch.setattr(Llama, "extra_tensors", lambda self: iter(()))
    res = export_gguf(tiny_llama3(), tmp_path / "no-rope-freqs.gguf", "F32", validate=False)
    from export.validate import validate_gguf

    from compress.errors import SlimkitError

    with pytest.raises(SlimkitError, match="logits differ from torch"):
        validate_gguf(res.path, tiny_llama3(), "F32")
