"""ONNX export and evaluation on bad input: one line, exit code 2, nothing half-written."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai")

from compress.checkpoint import save  # noqa: E402
from compress.errors import SlimkitError  # noqa: E402
from export.onnx.export import export_onnx  # noqa: E402
from slimkit.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from conftest import tiny_llama

    return save(tiny_llama(), tmp_path_factory.mktemp("ckpt") / "tiny-llama")


@pytest.fixture(scope="module")
def export_dir(llama_dir, tmp_path_factory) -> Path:
    return export_onnx(llama_dir, tmp_path_factory.mktemp("onnx") / "fp32", "fp32", validate=False).path


@pytest.fixture
def text(tmp_path) -> Path:
    from conftest import TRAIN_TEXT

    path = tmp_path / "text.txt"
    path.write_text(TRAIN_TEXT)
    return path


def one_line_error(capsys, args: list[str], *needles: str) -> str:
    code = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("slimkit: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("extra, needle", [
    (["--precision", "int2"], "unsupported ONNX precision 'int2'"),
    (["--precision", "bf16"], "choose one of fp32, fp16, int8, int4"),
    (["--precision", "int4", "--block-size", "48"], "unsupported quantization block size 48"),
    (["--precision", "fp32", "--block-size", "32"], "--block-size applies to int8 and int4 only"),
])
def test_bad_options(llama_dir, tmp_path, capsys, extra, needle):
    one_line_error(capsys, ["export", "onnx", str(llama_dir), "-o", str(tmp_path / "o")] + extra, needle)
    assert leftovers(tmp_path) == []


def test_unsupported_architecture(tmp_path, capsys):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert"}')
    one_line_error(capsys, ["export", "onnx", str(d), "-o", str(tmp_path / "o")], "unsupported architecture", "bert")
    assert leftovers(tmp_path) == ["bert"]


def test_missing_onnxruntime(llama_dir, export_dir, tmp_path, monkeypatch, capsys, text):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    one_line_error(capsys, ["export", "onnx", str(llama_dir), "-o", str(tmp_path / "o")], "pip install 'slimkit[onnx]'")
    one_line_error(capsys, ["eval", str(export_dir), "--text", str(text)], "needs onnxruntime")
    assert leftovers(tmp_path) == ["text.txt"]


def test_output_not_an_export(llama_dir, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    one_line_error(capsys, ["export", "onnx", str(llama_dir), "-o", str(tmp_path / "o")], "is not an ONNX export")
    (tmp_path / "f").write_text("x")
    one_line_error(capsys, ["export", "onnx", str(llama_dir), "-o", str(tmp_path / "f")], "is a file")
    one_line_error(capsys, ["export", "onnx", str(llama_dir), "-o", str(tmp_path / "no" / "o")], "does not exist")
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine" and leftovers(tmp_path) == ["f", "o"]


def test_failed_validation_leaves_nothing(llama_dir, tmp_path, monkeypatch):
    from export.onnx import validate

    monkeypatch.setitem(validate.LOGIT_TOLERANCE, "fp32", 0.0)  # any rounding difference now fails
    with pytest.raises(SlimkitError, match="validation failed for the fp32 ONNX export: logits differ"):
        export_onnx(llama_dir, tmp_path / "o", "fp32")
    assert leftovers(tmp_path) == []


def test_failed_validation_keeps_previous_export(llama_dir, export_dir, tmp_path, monkeypatch):
    from export.onnx import validate

    out = tmp_path / "o"
    shutil.copytree(export_dir, out)
    before = (out / "model.onnx").read_bytes()
    monkeypatch.setitem(validate.KV_TOLERANCE, "int4", 0.0)
    with pytest.raises(SlimkitError, match="KV-cache decoding differs"):
        export_onnx(llama_dir, out, "int4")
    assert (out / "model.onnx").read_bytes() == before and leftovers(tmp_path) == ["o"]


def test_non_uniform_layers(tmp_path):
    """A per-layer pruned FFN (what non-uniform width pruning produces) cannot be expressed in
    the builder's one global intermediate_size: refused before anything is written."""
    import torch

    from conftest import tiny_llama

    ckpt = tiny_llama()
    mlp = ckpt.model.model.layers[1].mlp
    mlp.gate_proj, mlp.up_proj = torch.nn.Linear(64, 96, bias=False), torch.nn.Linear(64, 96, bias=False)
    mlp.down_proj = torch.nn.Linear(96, 64, bias=False)
    with pytest.raises(SlimkitError, match=r"layers\.1\.mlp\.gate_proj\.weight has shape \(96, 64\).*uniform"):
        export_onnx(ckpt, tmp_path / "o", "fp32")
    assert leftovers(tmp_path) == []


def test_eval_broken_exports(export_dir, tmp_path, capsys, text):
    broken = tmp_path / "truncated"
    shutil.copytree(export_dir, broken)
    data = broken / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    one_line_error(capsys, ["eval", str(broken), "--text", str(text)], "ONNX Runtime could not load")
    no_model = tmp_path / "no-model"
    shutil.copytree(export_dir, no_model)
    (no_model / "model.onnx").unlink()
    one_line_error(capsys, ["eval", str(no_model), "--text", str(text)], "has no model.onnx")
    bad_cfg = tmp_path / "bad-config"
    shutil.copytree(export_dir, bad_cfg)
    (bad_cfg / "genai_config.json").write_text("{")
    one_line_error(capsys, ["eval", str(bad_cfg), "--text", str(text)], "genai_config.json is not valid JSON")
    assert json.loads((export_dir / "genai_config.json").read_text())  # the original is untouched
