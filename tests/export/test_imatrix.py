"""Importance matrices: llama.cpp's GGUF and legacy .dat formats, and the imatrix reaching
llama.cpp's own quantizer through llama_model_quantize_params.imatrix."""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
import torch

from compress.calib import collect
from compress.errors import SlimkitError
from export.gguf import imatrix as imx
from export.gguf.calibrated import imatrix_names
from conftest import tiny_llama


def _stats(ckpt, gram=False, n=4, seq=48):
    g = torch.Generator().manual_seed(3)
    windows = torch.randint(0, ckpt.model.config.vocab_size, (n, seq), generator=g)
    return collect(ckpt.model, windows, gram=gram, progress=False, source="random ids")


@pytest.fixture(scope="module")
def tiny():
    ckpt = tiny_llama()
    return ckpt, imx.from_stats(_stats(ckpt), imatrix_names(ckpt), ["random ids"], 48)


def test_names_are_gguf_block_weights(tiny):
    ckpt, im = tiny
    assert "blk.0.attn_q.weight" in im.sums and "blk.1.ffn_down.weight" in im.sums
    assert "token_embd.weight" not in im.sums and "output.weight" not in im.sums  # tied head: as llama-imatrix
    assert im.counts["blk.0.ffn_down.weight"] == 4 * 48 and im.chunk_count == 4
    untied = tiny_llama(tie=False)
    assert "output.weight" in imatrix_names(untied).values()


def test_gguf_round_trip_in_llama_imatrix_layout(tiny, tmp_path):
    _, im = tiny
    path = tmp_path / "imatrix.gguf"
    imx.write(im, path)
    r = gguf.GGUFReader(path)
    assert r.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in r.fields
    assert r.fields["imatrix.datasets"].contents() == ["random ids"]
    assert r.fields["imatrix.chunk_size"].contents() == 48
    t = {x.name: x for x in r.tensors}
    sums = t["blk.0.ffn_down.weight.in_sum2"]
    assert sums.tensor_type == gguf.GGMLQuantizationType.F32 and list(sums.shape) == [128, 1]
    assert list(t["blk.0.ffn_down.weight.counts"].shape) == [1, 1]
    back = imx.read(path)
    assert set(back.sums) == set(im.sums) and not back.legacy
    for name in im.sums:
        np.testing.assert_array_equal(back.sums[name], im.sums[name])
        assert back.counts[name] == im.counts[name]
        np.testing.assert_array_equal(back.values(name), im.values(name))


def test_legacy_dat_round_trip_gives_the_same_values(tiny, tmp_path):
    _, im = tiny
    path = tmp_path / "imatrix.dat"
    imx.write_legacy(im, path)
    back = imx.read(path)
    assert back.legacy and back.datasets == ["random ids"] and back.chunk_count == im.chunk_count
    for name in im.sums:
        # (sum / count) * ncall stored as float32, read back divided by ncall
        np.testing.assert_allclose(back.values(name), im.values(name), rtol=1e-6)
    # layout: n_entries, then name length, name, ncall, nval
    raw = path.read_bytes()
    n, length = struct.unpack_from("<ii", raw)
    assert n == len(im.sums) and raw[8:8 + length].decode() == sorted(im.sums)[0]


@pytest.mark.parametrize("damage", ["truncate", "not_imatrix", "garbage", "no_counts"])
def test_corrupt_imatrix_is_one_line(tiny, tmp_path, damage):
    _, im = tiny
    path = tmp_path / "bad.gguf"
    if damage == "truncate":
        imx.write(im, path)
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "not_imatrix":
        w = gguf.GGUFWriter(path, "llama")
        w.add_string("general.type", "model")
        w.add_tensor("x", np.zeros(4, dtype=np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    else:
        w = gguf.GGUFWriter(path, "llama")
        w.add_string("general.type", "imatrix")
        w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones((1, 64), dtype=np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(SlimkitError) as exc:
        imx.read(path)
    assert "\n" not in str(exc.value)


def test_imatrix_of_another_model_is_refused(tiny):
    ckpt, im = tiny
    other = imx.Imatrix({k: v for k, v in im.sums.items() if "blk.1" not in k}, dict(im.counts))
    with pytest.raises(SlimkitError, match="no entry for blk.1"):
        other.check({n: 1 for n in im.sums})
    wide = imx.Imatrix({k: np.ones(v.size * 2, np.float32) for k, v in im.sums.items()}, dict(im.counts))
    with pytest.raises(SlimkitError, match="another model"):
        wide.check({n: v.size for n, v in im.sums.items()})
