"""Tiny random llama / gemma3 -> ONNX at every precision, validated in ONNX Runtime and
onnxruntime-genai; perplexity of the export against torch's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai")

import onnx  # noqa: E402

from compress.checkpoint import save  # noqa: E402
from export.onnx.export import export_onnx  # noqa: E402
from export.onnx.layout import file_mb  # noqa: E402

SIDE_FILES = ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "slimkit_onnx.json", "validation.json")
# Quantized exports against torch fp32 on the tiny random llama (measured: int8 top-1 0.90, KL
# 0.004; int4 top-1 0.42, KL 0.17: 64-wide random layers are the worst case for 32-blocks).
# Model files relative to fp32 (int8 keeps the embedding table fp32: only MatMuls are quantized).
MAX_SIZE_VS_FP32 = {"fp32": 1.0, "fp16": 0.55, "int8": 0.7, "int4": 0.3}
QUANT_FLOOR = {"int8": {"top1": 0.85, "kl": 0.01}, "int4": {"top1": 0.35, "kl": 0.3}}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from conftest import tiny_llama

    return save(tiny_llama(), tmp_path_factory.mktemp("ckpt") / "tiny-llama")  # slimkit.json included


@pytest.fixture(scope="module")
def fp32_export(llama_dir, tmp_path_factory) -> Path:
    return export_onnx(llama_dir, tmp_path_factory.mktemp("onnx") / "fp32", "fp32").path


def op_types(model_dir: Path) -> dict[str, list]:
    graph = onnx.load(model_dir / "model.onnx", load_external_data=False).graph
    out: dict[str, list] = {}
    for node in graph.node:
        out.setdefault(node.op_type, []).append({a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_export_precision(llama_dir, fp32_export, tmp_path, precision):
    res = fp32_export if precision == "fp32" else export_onnx(llama_dir, tmp_path / precision, precision).path
    out = Path(res)
    v = json.loads((out / "validation.json").read_text())
    assert v["passed"] and v["tokenizer_identical"] and v["n_tokens"] > 100, v
    kv = v["kv_cache"]
    assert kv["steps"] == 32 and kv["max_abs_diff"] <= kv["tolerance"], kv
    assert "genai" in v["greedy"], "onnxruntime-genai did not run the export"
    for name in SIDE_FILES:
        assert (out / name).is_file(), name
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]
    ops = op_types(out)
    assert "GroupQueryAttention" in ops  # past/present KV cache inputs and outputs
    if precision in ("fp32", "fp16"):
        assert v["max_abs_diff"] <= v["tolerance"], v
        assert v["top1_agreement"] == 1.0
    if precision == "fp32":
        assert v["max_abs_diff"] < 1e-4 * max(1.0, v["max_abs_logit"])  # measured 1.4e-6 relative
        assert v["greedy"]["identical"] and v["greedy"]["genai_identical"], v["greedy"]
        assert len(v["greedy"]["torch"]) == 32
    if precision in QUANT_FLOOR:
        floor = QUANT_FLOOR[precision]
        assert v["top1_agreement"] >= floor["top1"] and v["mean_kl"] <= floor["kl"], v
    if precision in ("int8", "int4"):
        bits = int(precision[3:])
        assert "MatMul" not in ops and len(ops["MatMulNBits"]) == 2 * 5 + 1  # 2 x (qkv, o, gate, up, down) + lm_head
        assert all(a["bits"] == bits and a["block_size"] == 32 and a["accuracy_level"] == 4
                   for a in ops["MatMulNBits"])
    if precision == "fp16":
        past = [i for i in onnx.load(out / "model.onnx", load_external_data=False).graph.input
                if i.name.startswith("past_key_values")]
        assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in past)
    assert file_mb(out) <= MAX_SIZE_VS_FP32[precision] * file_mb(fp32_export)
    info = json.loads((out / "slimkit_onnx.json").read_text())
    assert info["export"]["precision"] == precision and info["source"]["stages"] == []
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["num_hidden_layers"] == 2
    from conftest import tiny_llama

    from devices.artifact import describe

    described = describe(out)  # the device profiler counts the exported model's parameters
    assert described.n_params == info["model"]["n_params"] == sum(p.numel() for p in tiny_llama().model.parameters())
    assert described.matmul_params == 2 * (64 * 16 * 12 + 3 * 64 * 128)


def test_int4_block_size(llama_dir, tmp_path):
    res = export_onnx(llama_dir, tmp_path / "b16", "int4", block_size=16)
    assert res.validation["passed"]
    assert {a["block_size"] for a in op_types(res.path)["MatMulNBits"]} == {16}
    assert json.loads((res.path / "slimkit_onnx.json").read_text())["export"]["block_size"] == 16


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_gemma3(tmp_path, precision):
    from conftest import tiny_gemma3

    res = export_onnx(tiny_gemma3(), tmp_path / "g", precision)
    v = res.validation
    assert v["passed"] and v["kv_cache"]["max_abs_diff"] <= v["kv_cache"]["tolerance"]
    assert json.loads((res.path / "genai_config.json").read_text())["model"]["type"] == "gemma3_text"
    if precision == "fp32":
        assert v["max_abs_diff"] <= v["tolerance"] and v["greedy"]["identical"] and v["greedy"]["genai_identical"]


def test_export_from_gguf_source(tmp_path, monkeypatch):
    """A .gguf source goes through the converted checkpoint slimkit caches (with gguf_vocab.json)."""
    from conftest import tiny_llama
    from export.gguf.writer import export_gguf

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    gguf_path = tmp_path / "tiny.gguf"
    export_gguf(tiny_llama(), gguf_path, "F32", validate=False)
    res = export_onnx(str(gguf_path), tmp_path / "onnx", "fp32")
    assert list((tmp_path / "cache").rglob("gguf_vocab.json"))
    assert res.validation["passed"] and res.validation["greedy"]["identical"]


def test_reexport_replaces(llama_dir, tmp_path):
    out = tmp_path / "o"
    export_onnx(llama_dir, out, "int4", validate=False)
    export_onnx(llama_dir, out, "fp16", validate=False)
    assert json.loads((out / "slimkit_onnx.json").read_text())["export"]["precision"] == "fp16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_eval_onnx_matches_torch(llama_dir, fp32_export, tmp_path, capsys):
    from conftest import TRAIN_TEXT

    from slimkit.cli import main
    from slimkit.evaluation import evaluate_source

    text = tmp_path / "text.txt"
    text.write_text(TRAIN_TEXT)
    ref = evaluate_source(str(llama_dir), text, ctx=64)
    got = evaluate_source(str(fp32_export), text, ctx=64)
    assert got["runtime"] == "onnxruntime" and ref["runtime"] == "torch"
    assert (got["tokens_scored"], got["windows"]) == (ref["tokens_scored"], ref["windows"]) and got["windows"] > 5
    assert abs(got["ppl"] - ref["ppl"]) <= 1e-5 * ref["ppl"], (got, ref)
    assert main(["eval", str(fp32_export), "--text", str(text), "--ctx", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ppl"] == pytest.approx(got["ppl"])


def test_cli_export(llama_dir, tmp_path, capsys):
    from slimkit.cli import main

    assert main(["export", "onnx", str(llama_dir), "-o", str(tmp_path / "o"), "--precision", "int4",
                 "--block-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "ONNX int4" in out and "validated in ONNX Runtime" in out
    assert {a["block_size"] for a in op_types(tmp_path / "o")["MatMulNBits"]} == {64}


def test_import_export_does_not_load_onnxruntime():
    code = ("import sys, export, export.onnx.export, export.onnx.validate, slimkit.evaluation, slimkit.cli; "
            "bad = [m for m in ('onnx', 'onnxruntime', 'onnxruntime_genai') if m in sys.modules]; "
            "assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
