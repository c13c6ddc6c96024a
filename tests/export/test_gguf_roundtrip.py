"""Tiny random llama and gemma3 models -> GGUF -> llama.cpp: logits parity per type."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from compress.checkpoint import load, save  # noqa: E402
from export.gguf import types as gtypes  # noqa: E402
from export.gguf.writer import export_gguf  # noqa: E402

# llama.cpp vs torch running the stored (fake-quantized) weights: top-1 agreement. Only ggml's
# Q8_0 activation rounding separates them, so most argmaxes agree even on flat random logits.
MIN_STORED_TOP1 = {"F32": 0.99, "F16": 0.99, "Q8_0": 0.9, "Q4_0": 0.9, "Q4_1": 0.9, "Q5_0": 0.9, "Q5_1": 0.9}


@pytest.mark.parametrize("gtype", list(MIN_STORED_TOP1))
def test_roundtrip_parity(tiny_ckpt, tmp_path, gtype):
    out = tmp_path / f"tiny.{gtype}.gguf"
    res = export_gguf(tiny_ckpt, out, gtype)  # validate=True: raises if float types exceed tolerance
    v = res.validation
    assert v["tokenizer_identical"] and v["n_tokens"] > 100
    assert v["passed"] and v["stored"]["max_abs_diff"] <= v["tolerance"], v
    assert v["stored"]["top1_agreement"] >= MIN_STORED_TOP1[gtype], v
    if gtype in ("F32", "F16"):
        assert v["top1_agreement"] >= 0.99, v
    stored = json.loads(out.with_name(out.name + ".validation.json").read_text())
    assert stored["max_abs_diff"] == v["max_abs_diff"]
    r = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert all(types[n] == "F32" for n in types if n.endswith("_norm.weight"))
    assert types["blk.0.ffn_down.weight"] == gtype
    assert "output.weight" not in types  # tied embeddings are not duplicated
    assert not list(tmp_path.glob(".*partial*"))


def test_q8_0_blocks_are_formats_bytes(tmp_path):
    """The writer packs with compress.quant.formats: bytes in the file == gguf reference."""
    from conftest import tiny_llama

    ckpt = tiny_llama(seed=3)
    out = tmp_path / "t.gguf"
    export_gguf(ckpt, out, "Q8_0", validate=False)
    r = gguf.GGUFReader(out)
    t = next(t for t in r.tensors if t.name == "blk.1.ffn_up.weight")
    w = ckpt.model.model.layers[1].mlp.up_proj.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(t.data), gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0))


@pytest.mark.parametrize("gtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_blocks_identical_to_llama_quantize(tmp_path, gtype):
    """slimkit's files hold exactly the bytes llama.cpp's own quantizer writes from the same F32
    file (its 4/5-bit mixes fall back to Q8_0 for the 64-wide embedding, like ours)."""
    from conftest import tiny_llama

    from export.gguf.quantize import llama_quantize
    from export.gguf.writer import write_native

    ckpt = tiny_llama(seed=4)
    write_native(ckpt, tmp_path / "f32.gguf", gtypes.parse("F32"))
    llama_quantize(tmp_path / "f32.gguf", tmp_path / "llama.gguf", gtypes.parse(gtype))
    export_gguf(ckpt, tmp_path / "ours.gguf", gtype, validate=False)
    theirs = {t.name: t for t in gguf.GGUFReader(tmp_path / "llama.gguf").tensors}
    ours = {t.name: t for t in gguf.GGUFReader(tmp_path / "ours.gguf").tensors}
    assert set(theirs) == set(ours)
    for name, t in theirs.items():
        assert t.tensor_type == ours[name].tensor_type, name
        np.testing.assert_array_equal(np.asarray(t.data).view(np.uint8), np.asarray(ours[name].data).view(np.uint8))


def test_saved_checkpoint_roundtrip(tmp_path):
    """save() -> HF dir with slimkit.json -> load() -> export: the history travels into the GGUF."""
    from conftest import tiny_gemma3

    ckpt = tiny_gemma3(seed=1)
    d = save(ckpt, tmp_path / "ckpt", stage={"stage": "test", "config": {"k": 1}})
    hist = json.loads((d / "slimkit.json").read_text())
    assert hist["stages"][-1]["stage"] == "test" and hist["family"] == "gemma3"
    again = load(d)
    out = tmp_path / "g.gguf"
    res = export_gguf(again, out, "F32")
    assert res.validation["passed"]
    r = gguf.GGUFReader(out)
    stored = json.loads(r.fields["general.slimkit.history"].contents())
    assert stored["stages"][-1]["stage"] == "test"


def test_llama_cpp_types_via_quantizer(tmp_path):
    from conftest import tiny_llama

    out = tmp_path / "q.gguf"
    res = export_gguf(tiny_llama(seed=2), out, "Q5_K_M")
    assert res.validation["top1_agreement"] >= 0.6
    r = gguf.GGUFReader(out)
    assert gguf.LlamaFileType(r.fields["general.file_type"].contents()) == gtypes.parse("Q5_K_M").file_type


def test_every_registered_architecture_has_a_roundtrip_test():
    """Adding a family to the exporter requires a tiny model in tests/conftest.py TINY."""
    from conftest import TINY

    from export.gguf.arch import get, registered

    families = {cls.gguf_arch for cls in registered().values()}
    tested = {get(TINY[f]().model.config).gguf_arch for f in TINY}
    assert families == tested


def test_every_type_has_a_gate():
    from export.validate import GATES

    assert set(GATES) == set(gtypes.ALL_TYPES)
