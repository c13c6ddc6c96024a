"""compress.quant.weighted must write the bytes of llama.cpp's importance-weighted quantizers.

The reference is ggml itself: ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix) from
the libggml-base shared library that llama-cpp-python ships, called through ctypes. With an imatrix
it runs quantize_row_*_impl (ggml/src/ggml-quants.c); with NULL the reference quantize_row_*_ref,
which compress.quant.formats reproduces. Q8_0 ignores the imatrix (quantize_q8_0).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from compress.quant import formats, weighted
from compress.quant.weighted import TYPES

# the block scale d each type gives uniform(-a, a) blocks is about a / LEVELS[type]
LEVELS = {"Q4_0": 8, "Q4_1": 7.5, "Q5_0": 16, "Q5_1": 15.5, "Q8_0": 127, "Q4_K": 7.5 * 63, "Q6_K": 32 * 128}


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    from conftest import libggml_base

    lib = libggml_base()
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    return lib


def ggml_quantize(lib: ctypes.CDLL, name: str, x: torch.Tensor, imp: torch.Tensor | None) -> np.ndarray:
    """ggml_quantize_chunk(type, x, dst, 0, rows, n_per_row, imp) -> (rows, row_bytes) uint8."""
    gguf = pytest.importorskip("gguf")
    qtype = gguf.GGMLQuantizationType[name]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    src = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    rows, n = src.shape
    out = np.zeros(rows * (n // block) * type_size, dtype=np.uint8)
    qw = None if imp is None else np.ascontiguousarray(imp.numpy(), dtype=np.float32)
    size = lib.ggml_quantize_chunk(int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, n,
                                   None if qw is None else qw.ctypes.data)
    assert size == out.size
    return out.reshape(rows, -1)


def assert_same_bytes(ours: torch.Tensor, ref: np.ndarray, what: str) -> None:
    assert ours.dtype == torch.uint8 and tuple(ours.shape) == ref.shape, (ours.shape, ref.shape)
    bad = np.flatnonzero(ours.numpy().reshape(-1) != ref.reshape(-1))
    assert bad.size == 0, f"{what}: {bad.size} bytes differ; first at row {bad[0] // ref.shape[1]}, byte {bad[0] % ref.shape[1]}"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cases() -> dict[str, torch.Tensor]:
    g = _gen(0)
    zero_blocks = torch.randn(8, 512, generator=g)
    zero_blocks.reshape(8, 32, 16)[:, ::3] = 0.0  # 16-wide (Q6_K) sub-blocks
    zero_blocks.reshape(8, 16, 32)[:, 1::4] = 0.0  # 32-wide blocks
    zero_blocks[0, :256] = 0.0  # a whole super-block
    outlier = torch.randn(8, 512, generator=g) * 1e-2
    outlier[torch.arange(8), torch.randint(0, 512, (8,), generator=g)] = 40.0
    outlier[:, 300] = -70.0
    mixed = torch.randn(8, 512, generator=g).reshape(8, 32, 16) * torch.logspace(-5, 2, 32)[None, :, None]
    return {
        "random": torch.randn(16, 512, generator=g),
        "random_large": torch.randn(8, 768, generator=g) * 30.0,
        "all_zero_rows": torch.zeros(3, 512),
        "zero_blocks": zero_blocks,
        "single_outlier": outlier,
        "positive_offset": torch.rand(8, 512, generator=g) + 5.0,
        "heavy_tailed": torch.distributions.StudentT(2.0).sample((8, 512)),
        "mixed_magnitudes": mixed.reshape(8, 512),
        "subnormal_scale": torch.randn(9, 512, generator=g) * torch.tensor([1e-6, 1e-7, 1e-8]).repeat(3)[:, None],
        "below_group_eps": torch.randn(2, 512, generator=g) * 1e-17,
    }


CASES = cases()


def importance(kind: str, n: int, seed: int = 1) -> torch.Tensor | None:
    g = _gen(seed)
    if kind == "none":
        return None
    if kind == "uniform":
        return torch.rand(n, generator=g) + 0.05
    if kind == "skewed":  # imatrix-like: a few columns dominate
        return torch.exp(2.5 * torch.randn(n, generator=g))
    imp = torch.rand(n, generator=g)  # "zeros": scattered zeros, a zero block, a zero super-block
    imp[::5] = 0.0
    imp[32:64] = 0.0
    if n >= 512:
        imp[256:512] = 0.0
    return imp


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("kind", ["none", "uniform", "skewed", "zeros"])
@pytest.mark.parametrize("case", list(CASES))
def test_bytes_identical_to_ggml(ggml: ctypes.CDLL, name: str, kind: str, case: str) -> None:
    x = CASES[case]
    imp = importance(kind, x.shape[1])
    ours = weighted.quantize(x, name, imp)
    assert_same_bytes(ours, ggml_quantize(ggml, name, x, imp), f"{name}/{case}/{kind}")
    if imp is None or name == "Q8_0":  # the reference path (quantize_q8_0 ignores quant_weights)
        assert torch.equal(ours, formats.quantize(x, name))


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e2])
def test_random_rows_and_importance(ggml: ctypes.CDLL, name: str, seed: int, scale: float) -> None:
    x = torch.randn(24, 1024, generator=_gen(seed + 10)) * scale
    imp = importance("skewed" if seed else "uniform", 1024, seed + 20)
    assert_same_bytes(weighted.quantize(x, name, imp), ggml_quantize(ggml, name, x, imp), f"{name} {seed} {scale}")


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("kind", ["none", "uniform"])
def test_near_fp16_overflow(ggml: ctypes.CDLL, name: str, kind: str) -> None:
    """Block scales d from 0.9 * 65504 to a little past fp16's largest finite value (stored as inf)."""
    g = _gen(3)
    amp = 65504.0 * LEVELS[name] * torch.linspace(0.9, 1.05, 8)[:, None]
    x = (torch.rand(8, 512, generator=g) * 2 - 1) * amp
    imp = importance(kind, 512)
    ours = weighted.quantize(x, name, imp)
    assert_same_bytes(ours, ggml_quantize(ggml, name, x, imp), f"{name}/overflow/{kind}")
    d = weighted.choose(x, name, imp, weighted.row_sigma2(x)).state[0]  # the fp16 (super-)scale
    finite = d.abs()[d.isfinite()]
    assert 0.9 * 65504 < finite.amax().item() <= 65504 and finite.numel() < d.numel()


@pytest.mark.parametrize("name", [t for t in TYPES if t != "Q8_0"])
def test_float32_subnormal_inputs(ggml: ctypes.CDLL, name: str) -> None:
    """Weights of 1e-38 .. 1e-44: c / (max - min) overflows to inf in make_qkx3_quants, so the fast
    torch.round path is refused and the nearest_int bit trick reproduces the C's garbage codes.
    (The reference legacy quantizers in formats.py do not match ggml at these magnitudes.)"""
    x = torch.randn(6, 512, generator=_gen(11)) * torch.tensor([1e-36, 1e-38, 1e-39, 1e-41, 1e-43, 1e-44])[:, None]
    x[1, :40] = 0.0
    for kind in ("uniform", "zeros"):
        imp = importance(kind, 512)
        assert_same_bytes(weighted.quantize(x, name, imp), ggml_quantize(ggml, name, x, imp), f"{name}/{kind}")


def test_row_sigma2_is_the_sequential_float32_sum() -> None:
    x = torch.randn(7, 576, generator=_gen(4)) * 3
    a = x.numpy()
    ref = np.cumsum(a * a, axis=1, dtype=np.float32)[:, -1] / np.float32(576)  # cumsum adds left to right
    assert np.array_equal(weighted.row_sigma2(x).numpy(), ref)


@pytest.mark.parametrize("name", TYPES)
def test_choose_by_group_matches_whole_rows(name: str) -> None:
    """GPTQ calls choose one group of columns at a time, with sigma2 of the whole rows."""
    G = formats.block_size(name)
    x = torch.randn(16, 3 * G if G == 256 else 8 * G, generator=_gen(5))
    imp = importance("skewed", x.shape[1])
    sigma2 = weighted.row_sigma2(x)
    parts = [weighted.choose(x[:, j:j + G], name, imp[j:j + G], sigma2) for j in range(0, x.shape[1], G)]
    whole = torch.cat([weighted.pack(p, p.q) for p in parts], dim=1)
    assert torch.equal(whole, weighted.quantize(x, name, imp))
    g = weighted.choose(x, name, imp, sigma2)
    assert torch.equal(torch.cat([p.q for p in parts], dim=1), g.q)
    assert torch.equal(torch.cat([p.scale for p in parts], dim=1), g.scale)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("kind", ["none", "zeros"])
def test_group_values_equal_ggml_dequantization(name: str, kind: str) -> None:
    """formats.dequantize(pack(g, q)) == g.scale * q + g.offset, exactly (as values: -0.0 == 0.0),
    for ggml's codes and for other codes (GPTQ's)."""
    x = torch.cat([CASES["random"][:8], CASES["zero_blocks"], CASES["subnormal_scale"], CASES["mixed_magnitudes"]])
    imp = importance(kind, 512)
    g = weighted.choose(x, name, imp, weighted.row_sigma2(x))
    assert g.scale.shape == g.offset.shape == (x.shape[0], 512 // g.sub) and g.q.shape == x.shape
    assert g.qmin <= g.q.min().item() and g.q.max().item() <= g.qmax
    other = (g.q + torch.randint(-2, 3, g.q.shape, generator=_gen(6))).clamp(g.qmin, g.qmax)
    for q in (g.q, other):
        deq = formats.dequantize(weighted.pack(g, q), name, tuple(x.shape))
        assert torch.equal(deq, weighted.values(g, q))


@pytest.mark.parametrize("name", TYPES)
def test_pack_rejects_bad_codes(name: str) -> None:
    x = torch.randn(4, 256, generator=_gen(7))
    g = weighted.choose(x, name, importance("uniform", 256), weighted.row_sigma2(x))
    for bad in (g.qmax + 1, g.qmin - 1, 0.5, float("nan")):
        q = g.q.clone()
        q[1, 3] = bad
        with pytest.raises(ValueError, match="codes must be integers"):
            weighted.pack(g, q)
    with pytest.raises(ValueError, match="shape"):
        weighted.pack(g, g.q[:, :128])
    with pytest.raises(ValueError, match="multiple of"):
        weighted.choose(x[:, :100], name, None)
    if name in weighted.USES_SIGMA2:
        with pytest.raises(ValueError, match="needs sigma2"):
            weighted.choose(x, name, importance("uniform", 256))


@pytest.mark.parametrize("name", [t for t in TYPES if t != "Q8_0"])
def test_weighted_lowers_importance_weighted_error(name: str) -> None:
    x = torch.randn(256, 512, generator=_gen(8))
    imp = torch.exp(3 * torch.randn(512, generator=_gen(9)))  # skewed: a few columns matter a lot
    errs = []
    for w in (None, imp):
        y = formats.dequantize(weighted.quantize(x, name, w), name, tuple(x.shape))
        errs.append(((x - y) ** 2 * imp).sum(dim=1))  # (rows,)
    ref, ours = errs
    # measured: 0.20 (Q4_1, Q5_1) .. 0.46 (Q4_0) of the reference's error, lower on every row
    assert ours.mean() < 0.7 * ref.mean(), (name, ours.mean().item(), ref.mean().item())
    assert (ours < ref).float().mean() > 0.9


def test_q8_0_ignores_importance() -> None:
    x = torch.randn(8, 256, generator=_gen(10))
    assert torch.equal(weighted.quantize(x, "Q8_0", importance("skewed", 256)), formats.quantize(x, "Q8_0"))


REAL_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. From the top he could "
    "see the fishing boats returning to the harbour, their lamps flickering against the grey water. "
    "He wrote the names of the ships in a leather notebook, along with the weather, the height of the "
    "tide and anything unusual he noticed. Over forty years the notebook grew into a small library: "
    "storms that tore roofs from the village, a whale that slept for a week in the bay, the winter the "
    "sea froze near the rocks. Children from the school visited him on Fridays and asked how the great "
    "lamp worked, why it turned, and whether he was ever lonely. He told them that a light is only "
    "useful if someone keeps it clean, and that the sea is never quiet if you listen closely. When the "
    "lighthouse was automated, he moved to a cottage at the edge of town, but he still walked to the "
    "cliff each night to watch the beam sweep across the water, counting the seconds between flashes."
)


@pytest.fixture(scope="module")
def real_layers() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """weight and imatrix-style importance (mean squared input activation per column) of a few
    SmolLM2-135M Linear layers, from forward hooks over ~256 tokens."""
    from conftest import zoo_path

    zoo_path("smollm2-135m-instruct")  # skips when the zoo package is absent
    from compress.checkpoint import load

    try:
        model, tokenizer = load("smollm2-135m-instruct")
    except Exception as exc:  # noqa: BLE001 - any failure to load means the real test cannot run
        pytest.skip(f"cannot load smollm2-135m-instruct: {exc}")
    names = ["model.layers.0.self_attn.q_proj", "model.layers.7.mlp.down_proj", "model.layers.15.mlp.gate_proj"]
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(
        lambda m, inp, out, n=n: sums.__setitem__(n, (inp[0].detach().float() ** 2).reshape(-1, inp[0].shape[-1])))
        for n in names]
    ids = tokenizer(REAL_TEXT, return_tensors="pt").input_ids[:, :256]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return {n: (modules[n].weight.detach().float().clone(), sums[n].mean(dim=0)) for n in names}


@pytest.mark.real
@pytest.mark.parametrize("name", TYPES)
def test_bytes_identical_on_real_weights(ggml: ctypes.CDLL, real_layers: dict, name: str) -> None:
    for layer, (w, imp) in real_layers.items():
        if w.shape[1] % formats.block_size(name):
            continue  # rows of 576 hold no whole 256-weight super-block (llama.cpp falls back too)
        w = w[:384]  # rows are quantized independently: a subset keeps the test short
        assert (imp > 0).all()
        ours = weighted.quantize(w, name, imp)
        assert_same_bytes(ours, ggml_quantize(ggml, name, w, imp), f"{name}/{layer}")
