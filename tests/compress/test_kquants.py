"""compress.quant.kquants must write the bytes of llama.cpp's own Q4_K / Q6_K reference quantizers.

The reference is ggml itself: quantize_row_q{4,6}_K_ref and dequantize_row_q{4,6}_K from the
libggml-base shared library that llama-cpp-python ships, called through ctypes. (The `gguf`
package only dequantizes K-quants, so it is a second reference for dequantization only.)
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
import pytest
import torch

from compress.quant import kquants

# name -> (quantize, dequantize, (block size, type size), ggml function suffix)
TYPES: dict[str, tuple[Callable, Callable, tuple[int, int], str]] = {
    "Q4_K": (kquants.quantize_q4_k, kquants.dequantize_q4_k, kquants.Q4_K_LAYOUT, "q4_K"),
    "Q6_K": (kquants.quantize_q6_k, kquants.dequantize_q6_k, kquants.Q6_K_LAYOUT, "q6_K"),
}


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    from conftest import libggml_base

    lib = libggml_base()
    for suffix in ("q4_K", "q6_K"):
        for fn in (f"quantize_row_{suffix}_ref", f"dequantize_row_{suffix}"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            getattr(lib, fn).restype = None
    return lib


def ggml_quantize(lib: ctypes.CDLL, name: str, x: torch.Tensor) -> np.ndarray:
    """`void quantize_row_q*_K_ref(const float * x, block * y, int64_t k)` on x's rows, concatenated."""
    _, _, (block, type_size), suffix = TYPES[name]
    flat = np.ascontiguousarray(x.numpy(), dtype=np.float32).reshape(-1)
    out = np.zeros(flat.size // block * type_size, dtype=np.uint8)
    getattr(lib, f"quantize_row_{suffix}_ref")(flat.ctypes.data, out.ctypes.data, flat.size)
    return out.reshape(*x.shape[:-1], -1)


def ggml_dequantize(lib: ctypes.CDLL, name: str, data: np.ndarray, n: int) -> np.ndarray:
    """`void dequantize_row_q*_K(const block * x, float * y, int64_t k)`."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    out = np.zeros(n, dtype=np.float32)
    getattr(lib, f"dequantize_row_{TYPES[name][3]}")(data.ctypes.data, out.ctypes.data, n)
    return out


def assert_same_bytes(ours: torch.Tensor, ref: np.ndarray, what: str, type_size: int) -> None:
    assert ours.dtype == torch.uint8 and tuple(ours.shape) == ref.shape, (ours.shape, ref.shape)
    bad = np.flatnonzero(ours.numpy().reshape(-1) != ref.reshape(-1))
    assert bad.size == 0, (f"{what}: {bad.size} bytes differ; first at block {bad[0] // type_size}, "
                           f"byte {bad[0] % type_size}")


def assert_same_floats(ours: np.ndarray, ref: np.ndarray) -> None:
    """Bit-identical float32 (so -0.0 != +0.0), NaN counted equal to NaN."""
    ours, ref = ours.reshape(-1), ref.reshape(-1)
    both_nan = np.isnan(ours) & np.isnan(ref)
    bad = np.flatnonzero((ours.view(np.uint32) != ref.view(np.uint32)) & ~both_nan)
    assert bad.size == 0, f"{bad.size} values differ; first at {bad[0]}: {ours[bad[0]]!r} vs {ref[bad[0]]!r}"


def edge_cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    mixed = randn(8, 512).reshape(8, 32, 16)  # 16-wide sub-blocks scaled 1e-5 .. 1e2 within a block
    mixed = (mixed * torch.logspace(-5, 2, 32)[None, :, None]).reshape(8, 512)
    zero_subs = randn(8, 512)
    zero_subs.reshape(8, 32, 16)[:, ::3] = 0.0  # every third 16-wide (Q6_K) sub-block empty
    zero_subs.reshape(8, 16, 32)[:, 1::4] = 0.0  # and some 32-wide (Q4_K) ones
    outlier = randn(8, 512) * 1e-3
    outlier[:, 7] = 50.0
    outlier[:, 300] = -80.0
    grid = torch.randint(0, 16, (8, 512), generator=g).float() * 0.05 - 0.4  # Q4_1-like grid: many ties
    cases = {
        "all_zero": torch.zeros(3, 256),
        "zero_sub_blocks": zero_subs,
        "single_outlier": outlier,
        "all_negative": -randn(8, 512).abs() - 0.01,
        "all_positive": randn(8, 512).abs() + 0.01,
        "positive_offset": torch.rand(8, 512, generator=g) + 5.0,  # min > 0 -> min = 0 branch
        "near_fp16_overflow": randn(8, 512) * 6.0e4,
        "fp16_max_uniform": (torch.rand(8, 512, generator=g) * 2 - 1) * 65504.0,
        "subnormal_scale": randn(8, 512) * 1e-6,
        "zero_fp16_scale": randn(8, 512) * 1e-9,  # super-scale rounds to 0 in fp16
        "below_group_eps": randn(4, 256) * 1e-17,
        "constant": torch.cat([torch.full((2, 256), 2.5), torch.full((2, 256), -3.0), torch.full((2, 256), 1e-3)]),
        "mixed_sub_block_magnitudes": mixed,
        "half_way_grid": (torch.arange(2048, dtype=torch.float32).reshape(4, 512) % 64 - 31.5) / 4,
        "q4_1_grid": grid,
        "heavy_tailed": torch.distributions.StudentT(2.0).sample((16, 512)),
    }
    cases["zero_sub_blocks"][0, :256] = 0.0  # one whole super-block empty
    return cases


CASES = edge_cases()


@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [1e-3, 1e-1, 1.0, 10.0, 1e2])
def test_random_rows_bytes_identical_to_ggml(ggml: ctypes.CDLL, name: str, seed: int, scale: float) -> None:
    x = torch.randn(32, 512, generator=torch.Generator().manual_seed(seed)) * scale
    quantize, _, (_, type_size), _ = TYPES[name]
    assert_same_bytes(quantize(x), ggml_quantize(ggml, name, x), f"{name} seed {seed} scale {scale}", type_size)


@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_edge_cases_bytes_identical_to_ggml(ggml: ctypes.CDLL, name: str, case: str) -> None:
    x = CASES[case]
    quantize, _, (_, type_size), _ = TYPES[name]
    assert_same_bytes(quantize(x), ggml_quantize(ggml, name, x), f"{name}/{case}", type_size)


@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_identical_to_ggml_and_gguf(ggml: ctypes.CDLL, name: str) -> None:
    gguf = pytest.importorskip("gguf")
    _, dequantize, (_, type_size), _ = TYPES[name]
    xs = [torch.randn(16, 512, generator=torch.Generator().manual_seed(3)) * s for s in (1e-2, 1.0, 1e2)]
    xs += [CASES["mixed_sub_block_magnitudes"], CASES["zero_sub_blocks"], CASES["subnormal_scale"]]
    datas = [ggml_quantize(ggml, name, x).reshape(-1, type_size) for x in xs]
    # arbitrary block contents too: every code and scale pattern, with finite fp16 super-scales
    g = np.random.default_rng(4)
    noise = g.integers(0, 256, size=(64, type_size), dtype=np.uint8)
    scale_cols = [0, 1, 2, 3] if name == "Q4_K" else [208, 209]
    noise[:, scale_cols] = g.uniform(-2, 2, size=(64, len(scale_cols) // 2)).astype(np.float16).view(np.uint8)
    for data in datas + [noise]:
        n = data.shape[0] * 256
        ours = dequantize(torch.from_numpy(data), (n // 256, 256)).numpy()
        assert ours.dtype == np.float32
        assert_same_floats(ours, ggml_dequantize(ggml, name, data, n))
        ref = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name])
        np.testing.assert_array_equal(ours, ref.reshape(ours.shape))


@pytest.mark.parametrize("name", list(TYPES))
def test_shapes_and_layout(name: str) -> None:
    quantize, dequantize, (block, type_size), _ = TYPES[name]
    assert block == 256 and type_size == {"Q4_K": 144, "Q6_K": 210}[name]
    x = torch.randn(2, 3, 1024, generator=torch.Generator().manual_seed(5))
    data = quantize(x)
    assert data.shape == (2, 3, 1024 // block * type_size) and data.dtype == torch.uint8
    y = dequantize(data, tuple(x.shape))
    assert y.shape == x.shape and y.dtype == torch.float32
    # 4.5 / 6.5625 bits per weight: the round trip must be close, but not lossless
    rel = ((y - x).norm() / x.norm()).item()
    assert 0 < rel < {"Q4_K": 0.12, "Q6_K": 0.03}[name]
    with pytest.raises(ValueError, match="multiple of the K-quant block size"):
        quantize(torch.zeros(4, 576))


def test_chunking_does_not_change_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(12, 1024, generator=torch.Generator().manual_seed(6))
    whole = {name: TYPES[name][0](x) for name in TYPES}
    monkeypatch.setattr(kquants, "_CHUNK", 5)
    for name in TYPES:
        assert torch.equal(TYPES[name][0](x), whole[name])


@pytest.fixture(scope="module")
def smollm2_weights() -> dict[str, torch.Tensor]:
    """A few real SmolLM2-135M matrices (dequantized from the bundled Q4_1 GGUF)."""
    from conftest import zoo_path

    zoo_path("smollm2-135m-instruct")  # skips when the zoo package is absent
    from compress.checkpoint import load

    state = load("smollm2-135m-instruct").model.state_dict()
    wanted = {
        "model.embed_tokens.weight": slice(0, 2048),  # first 2048 token rows
        "model.layers.0.self_attn.q_proj.weight": slice(None),
        "model.layers.7.mlp.down_proj.weight": slice(None),
        "model.layers.29.self_attn.v_proj.weight": slice(None),
        "model.layers.15.mlp.gate_proj.weight": slice(0, 256),
    }
    return {k: state[k][rows].detach().clone() for k, rows in wanted.items()}


@pytest.mark.real
@pytest.mark.parametrize("name", list(TYPES))
def test_bytes_identical_on_real_weights(ggml: ctypes.CDLL, smollm2_weights: dict[str, torch.Tensor],
                                         name: str) -> None:
    quantize, dequantize, (block, type_size), _ = TYPES[name]
    for key, w in smollm2_weights.items():
        # hidden size 576 is not a multiple of 256: rows of 576 are regrouped into rows of 256
        # (blocks never span rows, so this is the same computation on the same numbers)
        x = w if w.shape[-1] % block == 0 else w.reshape(-1, block)
        data = quantize(x)
        ref = ggml_quantize(ggml, name, x)
        assert_same_bytes(data, ref, f"{name}/{key}", type_size)
        assert_same_floats(dequantize(data, tuple(x.shape)).numpy(), ggml_dequantize(ggml, name, ref, x.numel()))
