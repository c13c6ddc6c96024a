"""compress.quant.formats must produce the gguf package's reference bytes exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from compress.quant import formats  # noqa: E402

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def reference(x: torch.Tensor, name: str) -> np.ndarray:
    return gguf.quants.quantize(x.numpy().astype(np.float32), gguf.GGMLQuantizationType[name])


def edge_cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cases = {
        "normal": torch.randn(64, 256, generator=g),
        "all_zero": torch.zeros(4, 64),
        "single_outlier": torch.randn(8, 64, generator=g) * 1e-3,
        "near_fp16_overflow": torch.randn(4, 64, generator=g) * 6.0e4,
        "beyond_fp16": torch.randn(2, 64, generator=g) * 1.0e7,
        "subnormal_scale": torch.randn(4, 64, generator=g) * 1e-6,
        "tiny_subnormal": torch.randn(4, 64, generator=g) * 1e-9,
        "ties_in_magnitude": torch.tensor([[1.0, -1.0] * 16, [-2.0, 2.0] * 16]),
        "half_way_codes": (torch.arange(64, dtype=torch.float32) - 31.5).reshape(2, 32) / 4,
        "heavy_tailed": torch.distributions.StudentT(2.0).sample((16, 128)),
        "all_negative": -torch.rand(4, 64, generator=g) - 0.5,
        "all_positive": torch.rand(4, 64, generator=g) + 0.5,
        "constant": torch.full((2, 64), 0.37),
    }
    cases["single_outlier"][:, 7] = 50.0
    return cases


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("case", list(edge_cases()))
def test_bytes_identical_to_gguf_reference(name: str, case: str) -> None:
    x = edge_cases()[case]
    ours = formats.quantize(x, name).numpy()
    ref = reference(x, name)
    assert ours.shape == ref.shape
    assert ours.dtype == np.uint8
    mismatch = np.argwhere(ours != ref)
    assert mismatch.size == 0, f"{name}/{case}: first differing byte at {mismatch[0]}"


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_reference(name: str) -> None:
    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    data = formats.quantize(x, name)
    ours = formats.dequantize(data, name, tuple(x.shape)).numpy()
    ref = gguf.quants.dequantize(data.numpy(), gguf.GGMLQuantizationType[name])
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(formats.fake_quantize(x, name).numpy(), ref)


@pytest.mark.parametrize("name,max_rel", [("Q8_0", 0.01), ("Q4_0", 0.2), ("Q4_1", 0.1), ("Q5_0", 0.1),
                                          ("Q5_1", 0.05)])
def test_quantization_error_is_bounded(name: str, max_rel: float) -> None:
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(2))
    err = (formats.fake_quantize(x, name) - x).abs().max() / x.abs().max()
    assert 0 < err < max_rel


def test_rejects_partial_blocks() -> None:
    assert not formats.can_quantize((4, 48), "Q4_0")
    with pytest.raises(ValueError, match="multiple of the block size"):
        formats.quantize(torch.zeros(2, 48), "Q8_0")


@pytest.mark.real
@pytest.mark.parametrize("name", TYPES)
def test_bytes_identical_on_real_weights(name: str) -> None:
    """Real SmolLM2 weights (dequantized from the bundled Q4_1 GGUF), several tensors."""
    from conftest import zoo_path

    reader = gguf.GGUFReader(zoo_path("smollm2-135m-instruct"))
    wanted = {"blk.0.attn_q.weight", "blk.7.ffn_down.weight", "blk.29.attn_v.weight"}
    tensors = [t for t in reader.tensors if t.name in wanted]
    assert len(tensors) == len(wanted)
    for t in tensors:
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        np.testing.assert_array_equal(formats.quantize(w, name).numpy(), reference(w, name))


@pytest.mark.parametrize("name", TYPES)
def test_pack_unpack_roundtrip(name: str) -> None:
    """unpack(pack(codes)) returns the codes and the fp16-rounded scales exactly."""
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(5))
    c = formats.codes(x, name)
    back = formats.unpack(formats.pack(c, name), name)
    assert torch.equal(back.q, c.q)
    assert torch.equal(back.d, formats.fp16_round(c.d))
    if c.m is not None:
        assert torch.equal(back.m, formats.fp16_round(c.m))


@pytest.mark.parametrize("name", TYPES)
def test_requantizing_stored_values_is_lossless(name: str) -> None:
    """quantize(dequantize(bytes)) == bytes: a grid tensor survives a second reference pass."""
    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(6))
    data = formats.quantize(x, name)
    again = formats.quantize(formats.dequantize(data, name, tuple(x.shape)), name)
    assert torch.equal(again, data)


@pytest.mark.parametrize("name", TYPES)
def test_pack_rejects_codes_out_of_range(name: str) -> None:
    lay = formats.layout(name)
    c = formats.codes(torch.randn(1, 32), name)
    bad = c.q.clone()
    bad[0, 0] = lay.code_max + 1
    with pytest.raises(ValueError, match="codes must be integers"):
        formats.pack(formats.Codes(c.d, bad, c.m), name)


def test_q5_high_bits_reach_every_position() -> None:
    """Each code's 5th bit lands at its own bit of qh (a one-hot sweep over the 32 positions)."""
    for j in range(32):
        q = torch.zeros(1, 32)
        q[0, j] = 16
        c = formats.unpack(formats.pack(formats.Codes(torch.ones(1, 1), q), "Q5_0"), "Q5_0")
        assert torch.equal(c.q, q), j


def test_fp16_round_passes_gradients_straight_through() -> None:
    x = torch.tensor([0.1, 1e-8, 7e4], requires_grad=True)
    y = formats.fp16_round(x)
    assert torch.equal(y, x.detach().half().float())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
