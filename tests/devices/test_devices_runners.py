"""Runners on this host: llama.cpp (llama-cpp-python, and llama-bench when installed) and ONNX Runtime."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from devices.errors import DeviceError
from devices.profile import measure
from devices.transports import LocalTransport
from devices_fixtures import tiny_gguf  # noqa: F401  (pytest fixtures)

FIELDS = {"name", "n_prompt", "n_gen", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts"}


def _check_record(rec: dict, reps: int, names: list[str]) -> None:
    assert [t["name"] for t in rec["tests"]] == names
    for t in rec["tests"]:
        assert FIELDS <= set(t) and len(t["samples_ns"]) == reps
        assert t["avg_ts"] == pytest.approx(sum(t["samples_ts"]) / reps)
        tokens = t["n_prompt"] + t["n_gen"]
        assert t["samples_ts"][0] == pytest.approx(tokens / (t["samples_ns"][0] / 1e9), rel=1e-6)
    assert rec["load_s"]["avg"] > 0 and rec["ttft_ms"]["avg"] > 0 and rec["peak_rss_bytes"] > 0
    assert rec["artifact_bytes"] > 0 and rec["summary"]["decode_tps"] > 0
    assert len(rec["loadavg_before"]) == 3


def test_llama_cpp_python_runner_local(tiny_gguf):
    pytest.importorskip("llama_cpp")
    rec = measure(tiny_gguf, LocalTransport(), threads=1, repetitions=3, prompts=(8, 32), gen=8, backend="python")
    assert rec["backend"] == "llama-cpp-python" and rec["n_threads"] == 1 and rec["repetitions"] == 3
    _check_record(rec, 3, ["pp8", "pp32", "tg8"])
    assert rec["model_size"] <= rec["artifact_bytes"]
    # the runner's own peak (python + llama.cpp + a tiny model), not the RSS of this pytest process that forked it
    assert rec["peak_rss_bytes"] < 400 * 2**20


def llama_bench_binary() -> str | None:
    return os.environ.get("SLIMKIT_LLAMA_BENCH") or shutil.which("llama-bench")


@pytest.mark.skipif(not llama_bench_binary(), reason="no llama-bench binary (PATH or $SLIMKIT_LLAMA_BENCH)")
def test_llama_bench_runner_local(tiny_gguf, monkeypatch):
    binary = llama_bench_binary()
    monkeypatch.setenv("PATH", os.path.dirname(os.path.abspath(binary)) + os.pathsep + os.environ["PATH"])
    rec = measure(tiny_gguf, LocalTransport(), threads=1, repetitions=2, prompts=(8, 32), gen=8, backend="llama-bench")
    assert rec["backend"] == "llama-bench" and rec["build_commit"]
    _check_record(rec, 2, ["pp8", "pp32", "tg8"])


def test_runtime_and_format_mismatch(tiny_gguf):
    with pytest.raises(DeviceError, match="is gguf; --runtime onnxruntime cannot run it"):
        measure(tiny_gguf, LocalTransport(), "onnxruntime")
    with pytest.raises(DeviceError, match="unknown runtime"):
        measure(tiny_gguf, LocalTransport(), "tvm")


def toy_kv_onnx(model_dir, vocab: int = 50, dim: int = 4) -> None:
    """A one-layer toy LM with the KV-cache interface of an exported model (input_ids, attention_mask,
    past_key_values.0.key/value -> logits, present.0.key/value), built with onnx.helper."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "E"),
             numpy_helper.from_array(rng.standard_normal((dim, vocab)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["h"]),                    # [1, S, dim]
             helper.make_node("Unsqueeze", ["h", "axis1"], ["kv"]),                     # [1, 1, S, dim]
             helper.make_node("Concat", ["past_key_values.0.key", "kv"], ["present.0.key"], axis=2),
             helper.make_node("Concat", ["past_key_values.0.value", "kv"], ["present.0.value"], axis=2),
             helper.make_node("MatMul", ["h", "W"], ["logits"])]                        # [1, S, vocab]
    past = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, "past", dim])  # noqa: E731
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"]),
                       helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "total"]),
                       past("past_key_values.0.key"), past("past_key_values.0.value")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", vocab]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [1, 1, "total", dim]),
         helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, [1, 1, "total", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir.mkdir(parents=True, exist_ok=True)
    save(model, str(model_dir / "model.onnx"))
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "toy", "vocab_size": vocab, "hidden_size": dim, "num_attention_heads": 1,
        "num_key_value_heads": 1, "head_dim": dim, "num_hidden_layers": 1, "intermediate_size": 2 * dim}))


def test_onnxruntime_runner_feeds_the_kv_cache(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    toy_kv_onnx(tmp_path / "toy")
    rec = measure(tmp_path / "toy", LocalTransport(), threads=1, repetitions=2, prompts=(8, 16), gen=6)
    assert rec["runtime"] == "onnxruntime" and rec["file_type"].startswith("onnx")
    _check_record(rec, 2, ["pp8", "pp16", "tg6"])
    assert rec["kv_cache_len_after_tg"] == 6  # each decode step appended one position and fed it back


def test_onnx_without_kv_inputs_is_a_clear_error(tmp_path):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, save

    d = tmp_path / "nokv"
    toy_kv_onnx(d)
    g = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "s"])],
                          [helper.make_tensor_value_info("logits", TensorProto.INT64, [1, "s"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    save(m, str(d / "model.onnx"))
    with pytest.raises(DeviceError, match="no input_ids / past_key_values"):
        measure(d, LocalTransport(), repetitions=1, prompts=(4,), gen=2)


def test_onnxruntime_runner_on_a_slimkit_onnx_export(tmp_path):
    """The directory `slimkit export onnx` writes (genai_config.json + model.onnx with a KV cache)."""
    pytest.importorskip("onnxruntime")
    try:
        from export.onnx.export import export_onnx
    except ImportError:
        pytest.skip("export.onnx is not available")
    from compress.errors import SlimkitError
    from tests.conftest import tiny_llama

    try:
        export_onnx(tiny_llama(seed=3), tmp_path / "onnx", "fp32", validate=False)
    except SlimkitError as exc:
        pytest.skip(f"ONNX export unavailable here: {exc}")
    rec = measure(tmp_path / "onnx", LocalTransport(), threads=1, repetitions=2, prompts=(8, 16), gen=5)
    _check_record(rec, 2, ["pp8", "pp16", "tg5"])
    assert rec["kv_cache_len_after_tg"] == 5
