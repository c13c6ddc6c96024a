"""Artifact description agrees with the gguf package's reader; bad files give one-line errors."""
from __future__ import annotations

import pytest

from devices.artifact import describe
from devices.errors import DeviceError
from devices_fixtures import tiny_gguf  # noqa: F401  (pytest fixtures)


def test_tensor_bytes_match_gguf_reader(tiny_gguf):
    from gguf import GGUFReader

    info, ref = describe(tiny_gguf), GGUFReader(tiny_gguf)
    assert info.weight_bytes == sum(int(t.n_bytes) for t in ref.tensors)
    assert info.n_params == sum(int(t.n_elements) for t in ref.tensors)
    assert info.file_type == "Q8_0" and info.arch == "llama" and info.n_layers == 2
    assert (info.n_head, info.n_head_kv, info.head_dim) == (4, 2, 16)


def test_truncated_and_foreign_files(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:200])
    with pytest.raises(DeviceError, match="truncated or corrupt GGUF header"):
        describe(cut)
    txt = tmp_path / "notes.gguf"
    txt.write_text("hello")
    with pytest.raises(DeviceError, match="neither a GGUF file nor an ONNX"):
        describe(txt)
    with pytest.raises(DeviceError, match="no such artifact"):
        describe(tmp_path / "missing.gguf")
    with pytest.raises(DeviceError, match="no model.onnx"):
        describe(tmp_path)


def test_devices_imports_neither_compress_nor_export():
    import subprocess
    import sys

    code = ("import sys, devices.profile, devices.predict, devices.transports, devices.specs, devices.artifact; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('compress', 'export', 'slimkit', 'torch', "
            "'llama_cpp', 'onnxruntime', 'transformers')]; print(bad); assert not bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_onnx_dir_sizes_with_and_without_config(tmp_path):
    import json

    d = tmp_path / "m"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"\0" * 1000)
    (d / "model.onnx.data").write_bytes(b"\0" * 9000)
    bare = describe(d)
    assert bare.format == "onnx" and bare.file_bytes == 10000 and bare.kv_bytes(100) == 0
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                               "num_attention_heads": 4, "num_key_value_heads": 2,
                                               "intermediate_size": 128, "vocab_size": 100}))
    info = describe(d / "model.onnx")
    assert info.n_layers == 2 and info.head_dim == 16 and info.kv_bytes(10) == 2 * 2 * 10 * 2 * 16 * 2
    assert info.weight_bytes == 10000 and info.matmul_params == 2 * (64 * 16 * 12 + 3 * 64 * 128)
    # slimkit's own export: genai_config.json, with the FFN width and the parameter count in slimkit_onnx.json
    (d / "config.json").unlink()
    (d / "genai_config.json").write_text(json.dumps({"model": {"type": "llama", "vocab_size": 100, "decoder": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_size": 16}}}))
    genai = describe(d)
    assert genai.matmul_params == 0 and genai.n_params == 0  # without slimkit_onnx.json: no FFN width
    (d / "slimkit_onnx.json").write_text(json.dumps({"model": {"n_params": 12345, "intermediate_size": 128}}))
    genai = describe(d)
    assert genai.matmul_params == info.matmul_params and genai.n_params == 12345 and genai.n_layers == 2
