"""Calibrated GGUF export: the imatrix inside llama.cpp's quantizer, slimkit's own weighted blocks
byte-identical to it, GPTQ files inside llama.cpp's mixes, validated in llama.cpp."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")

from compress.calib import collect  # noqa: E402
from compress.checkpoint import save  # noqa: E402
from compress.quant.calibrated import quantize_model  # noqa: E402
from export.gguf import arch as arch_registry  # noqa: E402
from export.gguf import imatrix as imx  # noqa: E402
from export.gguf import types as gtypes  # noqa: E402
from export.gguf.calibrated import Calibration, imatrix_names  # noqa: E402
from export.gguf.quantize import llama_quantize  # noqa: E402
from export.gguf.writer import export_gguf, write_native  # noqa: E402
from conftest import TRAIN_TEXT, tiny_gemma3, tiny_llama  # noqa: E402
from tests.slimkit.test_cli_bad_input import assert_one_line_error, run_cli  # noqa: E402


def _windows(ckpt, n=6, seq=64):
    ids = ckpt.tokenizer(TRAIN_TEXT)["input_ids"]
    return torch.tensor(ids[: n * seq]).reshape(n, seq)


def _tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _dequant(t: gguf.ReaderTensor) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    ckpt = tiny_llama()
    windows = _windows(ckpt)
    stats = collect(ckpt.model, windows, gram=True, progress=False, source="train text")
    im = imx.from_stats(stats, imatrix_names(ckpt), ["train text"], 64)
    work = tmp_path_factory.mktemp("cal")
    write_native(ckpt, work / "f32.gguf", gtypes.parse("F32"))
    stats.windows = windows  # for the sequential GPTQ tests below
    return ckpt, stats, im, work


def _llama_cpp(work: Path, im, gtype: str, name: str) -> Path:
    out = work / name
    values = {n: im.values(n) for n in im.sums} if im is not None else None
    llama_quantize(work / "f32.gguf", out, gtypes.parse(gtype), imatrix=values)
    return out


def test_the_imatrix_reaches_llama_cpp_and_lowers_the_weighted_error(calibrated):
    ckpt, stats, im, work = calibrated
    plain, weighted = _llama_cpp(work, None, "Q4_0", "plain.gguf"), _llama_cpp(work, im, "Q4_0", "imatrix.gguf")
    ref, a, b = _tensors(work / "f32.gguf"), _tensors(plain), _tensors(weighted)
    differ, err_plain, err_weighted = 0, 0.0, 0.0
    for name in im.sums:
        w = np.asarray(ref[name].data, dtype=np.float64).reshape(-1, int(ref[name].shape[0]))
        imp = im.values(name).astype(np.float64)
        differ += not np.array_equal(a[name].data, b[name].data)
        err_plain += float((imp * (w - _dequant(a[name])) ** 2).sum())
        err_weighted += float((imp * (w - _dequant(b[name])) ** 2).sum())
    assert differ == len(im.sums)  # every recorded tensor was quantized differently
    assert err_weighted < 0.97 * err_plain


@pytest.mark.parametrize("gtype", ["Q4_0", "Q5_1", "Q4_1"])
def test_slimkit_weighted_blocks_are_byte_identical_to_llama_cpp(calibrated, gtype, tmp_path):
    ckpt, stats, im, work = calibrated
    ref = _llama_cpp(work, im, gtype, f"ref-{gtype}.gguf")
    ref_t = _tensors(ref)
    spec = arch_registry.get(ckpt.model.config)
    types = {hf: ref_t[name].tensor_type.name for hf, name, t in spec.tensors(ckpt.model.state_dict())
             if t.dim() == 2}
    import copy

    model = copy.deepcopy(ckpt)
    quant = quantize_model(model.model, types, stats, "imatrix")
    ours = tmp_path / "ours.gguf"
    write_native(model, ours, gtypes.parse(gtype), quant=quant)
    ours_t = _tensors(ours)
    assert set(ours_t) == set(ref_t)
    for name, t in ref_t.items():
        assert ours_t[name].tensor_type == t.tensor_type, name
        assert np.array_equal(np.asarray(ours_t[name].data), np.asarray(t.data)), f"{name} differs"


@pytest.mark.parametrize("method,sequential", [("gptq", True), ("gptq+imatrix", True), ("gptq+imatrix", False),
                                               ("imatrix", True)])
def test_calibrated_q4_0_passes_llama_cpp_validation(calibrated, method, sequential, tmp_path):
    from compress.quant.gptq import GPTQConfig

    ckpt, stats, _, _ = calibrated
    out = tmp_path / "m.gguf"
    cal = Calibration(stats=stats, windows=stats.windows, gptq=GPTQConfig(sequential=sequential))
    res = export_gguf(ckpt, out, "Q4_0", method=method, calibration=cal)
    v = res.validation
    assert v["passed"] and "stored" in v and v["stored"]["max_abs_diff"] <= v["tolerance"]
    assert v["stored"]["top1_agreement"] >= 0.9  # only ggml's Q8_0 activation rounding separates them
    assert out.is_file() and not list(tmp_path.glob("*.partial"))


def test_gptq_k_mix_keeps_llama_cpp_types(tmp_path):
    ckpt = tiny_gemma3()
    windows = _windows(ckpt, 4, 64)
    stats = collect(ckpt.model, windows, progress=False)
    out = tmp_path / "k.gguf"
    res = export_gguf(ckpt, out, "Q3_K_M", method="gptq+imatrix", calibration=Calibration(stats=stats, windows=windows))
    assert res.validation["passed"] and res.validation["top1_agreement"] > 0.5
    assert {t.tensor_type.name for t in _tensors(out).values()} <= {"F32", "Q4_0", "Q5_0", "Q8_0", "Q4_1",
                                                                    "Q6_K", "Q5_1", "Q4_K", "Q3_K"}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "tiny"
    save(tiny_llama(), out)
    text = out.parent / "calib.txt"
    text.write_text(TRAIN_TEXT * 3)
    return out, text


def test_cli_calibrated_export_and_imatrix(hf_dir, tmp_path, capsys):
    src, text = hf_dir
    code, _ = run_cli(["imatrix", str(src), "--calib", str(text), "--calib-tokens", "1024", "--calib-seq-len", "128",
                       "-o", str(tmp_path / "im.gguf")], capsys)
    assert code == 0 and imx.read(tmp_path / "im.gguf").sums
    code, err = run_cli(["export", "gguf", str(src), "-o", str(tmp_path / "a.gguf"), "--type", "Q4_0",
                         "--imatrix", str(tmp_path / "im.gguf")], capsys)
    assert code == 0, err
    code, err = run_cli(["export", "gguf", str(src), "-o", str(tmp_path / "b.gguf"), "--type", "Q4_K_M",
                         "--calib", str(text), "--calib-tokens", "1024", "--calib-seq-len", "128",
                         "--method", "gptq"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("args,needle", [
    (["--type", "Q4_0", "--method", "gptq"], "needs calibration"),
    (["--type", "Q4_0", "--method", "gptq", "--imatrix", "IM"], "Gram"),
    (["--type", "F16", "--calib", "TEXT"], "float type"),
    (["--type", "Q4_0", "--calib", "SHORT"], "at least"),
    (["--type", "Q4_0", "--imatrix", "OTHER"], "another model"),
    (["--type", "Q4_0", "--imatrix", "CORRUPT"], "not a readable imatrix"),
    (["--method", "imatrix", "--calib", "TEXT"], "explicit --type"),
    (["--type", "IQ4_NL", "--calib", "TEXT", "--calib-tokens", "512", "--calib-seq-len", "128"], "does not apply"),
])
def test_cli_bad_calibration_input(hf_dir, tmp_path, capsys, args, needle):
    src, text = hf_dir
    short = tmp_path / "short.txt"
    short.write_text("too short")
    other = tmp_path / "other.gguf"
    imx.write(imx.Imatrix({"blk.0.attn_q.weight": np.ones(32, np.float32)}, {"blk.0.attn_q.weight": 1.0}), other)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(other.read_bytes()[:-40])
    im = tmp_path / "im.gguf"
    imx.write(imx.Imatrix({"blk.0.attn_q.weight": np.ones(64, np.float32)}, {"blk.0.attn_q.weight": 1.0}), im)
    subst = {"TEXT": str(text), "SHORT": str(short), "OTHER": str(other), "CORRUPT": str(corrupt), "IM": str(im)}
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    code, err = run_cli(["export", "gguf", str(src), "-o", str(out), *[subst.get(a, a) for a in args]], capsys)
    assert_one_line_error(code, err, needle)
    assert not list(out.parent.iterdir())
