"""Every loss against a plain reference written here with Python floats and loops."""
from __future__ import annotations

import math

import pytest
import torch

from compress.distill import losses
from compress.distill.losses import SparseLogits
from compress.errors import SlimkitError

TEMPS = [1.0, 2.0]


def _softmax(row: list[float], t: float) -> list[float]:
    m = max(row)
    e = [math.exp((x - m) / t) for x in row]
    s = sum(e)
    return [x / s for x in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _rows(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(-1, x.shape[-1]).tolist()


def _mean_over_rows(fn, s: torch.Tensor, t: torch.Tensor, temp: float, mask: torch.Tensor | None = None) -> float:
    vals = [fn(_softmax(a, temp), _softmax(b, temp)) for a, b in zip(_rows(s), _rows(t))]
    keep = [True] * len(vals) if mask is None else mask.reshape(-1).tolist()
    chosen = [v for v, k in zip(vals, keep) if k]
    return sum(chosen) / len(chosen)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 7, generator=g) * 2, torch.randn(2, 3, 7, generator=g) * 2


@pytest.mark.parametrize("temp", TEMPS)
def test_forward_and_reverse_kl(pair, temp):
    s, t = pair
    ref_f = _mean_over_rows(lambda ps, pt: _kl(pt, ps), s, t, temp) * temp**2
    ref_r = _mean_over_rows(lambda ps, pt: _kl(ps, pt), s, t, temp) * temp**2
    assert float(losses.forward_kl(s, t, temp)) == pytest.approx(ref_f, rel=1e-5)
    assert float(losses.reverse_kl(s, t, temp)) == pytest.approx(ref_r, rel=1e-5)
    assert ref_f != pytest.approx(ref_r, rel=1e-3)  # the two directions really differ here


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd(pair, beta):
    s, t = pair

    def ref(ps, pt):
        m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
        return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)

    assert float(losses.generalized_jsd(s, t, beta, 2.0)) == pytest.approx(_mean_over_rows(ref, s, t, 2.0) * 4, rel=1e-5)
    with pytest.raises(SlimkitError, match="beta"):
        losses.generalized_jsd(s, t, 1.0)


def test_total_variation(pair):
    s, t = pair
    ref = _mean_over_rows(lambda ps, pt: 0.5 * sum(abs(a - b) for a, b in zip(ps, pt)), s, t, 1.0)
    assert float(losses.total_variation(s, t)) == pytest.approx(ref, rel=1e-5)


def test_mask_selects_positions(pair):
    s, t = pair
    mask = torch.tensor([[True, False, True], [False, False, True]])
    ref = _mean_over_rows(lambda ps, pt: _kl(pt, ps), s, t, 1.0, mask)
    assert float(losses.forward_kl(s, t, mask=mask)) == pytest.approx(ref, rel=1e-5)


def test_cross_entropy(pair):
    s, _ = pair
    targets = torch.tensor([[0, 3, 6], [2, 2, 5]])
    ref = [-math.log(_softmax(row, 1.0)[y]) for row, y in zip(_rows(s), targets.reshape(-1).tolist())]
    assert float(losses.cross_entropy(s, targets)) == pytest.approx(sum(ref) / len(ref), rel=1e-5)


@pytest.mark.parametrize("temp", TEMPS)
def test_sparse_teacher_uses_k_plus_one_bins(pair, temp):
    s, t = pair
    k = 3
    sparse = SparseLogits.from_dense(t, k, temp)
    got_f = float(losses.forward_kl(s, sparse, temp))
    got_r = float(losses.reverse_kl(s, sparse, temp))
    ref_f, ref_r = [], []
    for a, b in zip(_rows(s), _rows(t)):
        ps, pt = _softmax(a, temp), _softmax(b, temp)
        top = sorted(range(len(b)), key=lambda i: -b[i])[:k]
        bins_t = [pt[i] for i in top] + [1 - sum(pt[i] for i in top)]
        bins_s = [ps[i] for i in top] + [1 - sum(ps[i] for i in top)]
        ref_f.append(_kl(bins_t, bins_s))
        ref_r.append(_kl(bins_s, bins_t))
    assert got_f == pytest.approx(sum(ref_f) / len(ref_f) * temp**2, rel=1e-4)
    assert got_r == pytest.approx(sum(ref_r) / len(ref_r) * temp**2, rel=1e-4)
    # Merging bins never raises a divergence; with k = V it is the dense loss exactly.
    assert got_f <= float(losses.forward_kl(s, t, temp)) + 1e-6
    full = SparseLogits.from_dense(t, t.shape[-1], temp)
    assert float(losses.forward_kl(s, full, temp)) == pytest.approx(float(losses.forward_kl(s, t, temp)), rel=1e-5)


def test_sparse_temperature_mismatch_is_an_error(pair):
    s, t = pair
    with pytest.raises(SlimkitError, match="temperature"):
        losses.forward_kl(s, SparseLogits.from_dense(t, 3, 1.0), temperature=2.0)


def test_hidden_losses():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    ra, rb = _rows(a), _rows(b)
    mse = sum(sum((x - y) ** 2 for x, y in zip(u, v)) / 5 for u, v in zip(ra, rb)) / 6

    def cos(u, v):
        return sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    cosine = sum(1 - cos(u, v) for u, v in zip(ra, rb)) / 6
    assert float(losses.hidden_mse(a, b)) == pytest.approx(mse, rel=1e-5)
    assert float(losses.hidden_cosine(a, b)) == pytest.approx(cosine, rel=1e-5)


def _relation_ref(x: torch.Tensor, y: torch.Tensor, heads: int) -> list[list[list[list[float]]]]:
    """Per batch, relation head, query i: softmax over keys j <= i of x_i . y_j / sqrt(d_r)."""
    b, n, d = x.shape
    dr = d // heads
    out = []
    for bi in range(b):
        per_head = []
        for r in range(heads):
            rows = []
            for i in range(n):
                xi = x[bi, i, r * dr:(r + 1) * dr].tolist()
                scores = [sum(p * q for p, q in zip(xi, y[bi, j, r * dr:(r + 1) * dr].tolist())) / math.sqrt(dr)
                          for j in range(i + 1)]
                rows.append(_softmax(scores, 1.0))
            per_head.append(rows)
        out.append(per_head)
    return out


def _relation_kl_ref(rel_t, rel_s) -> float:
    vals = [_kl(pt, ps) for bt, bs in zip(rel_t, rel_s) for ht, hs in zip(bt, bs) for pt, ps in zip(ht, hs)]
    return sum(vals) / len(vals)


def test_attention_and_value_relations():
    g = torch.Generator().manual_seed(2)
    # Student width 6 and teacher width 8: relations need only the same number of relation heads.
    qs, ks, vs = (torch.randn(2, 4, 6, generator=g) for _ in range(3))
    qt, kt, vt = (torch.randn(2, 4, 8, generator=g) for _ in range(3))
    ref_attn = _relation_kl_ref(_relation_ref(qt, kt, 2), _relation_ref(qs, ks, 2))
    ref_val = _relation_kl_ref(_relation_ref(vt, vt, 2), _relation_ref(vs, vs, 2))
    assert float(losses.attention_relation_kl(qs, ks, qt, kt, 2)) == pytest.approx(ref_attn, rel=1e-5)
    assert float(losses.value_relation_kl(vs, vt, 2)) == pytest.approx(ref_val, rel=1e-5)
    assert float(losses.attention_relation_kl(qt, kt, qt, kt, 2)) == pytest.approx(0.0, abs=1e-6)


def test_losses_are_differentiable_and_finite(pair):
    s, t = pair
    s = s.clone().requires_grad_(True)
    total = sum(fn(s, t) for fn in (losses.forward_kl, losses.reverse_kl, losses.generalized_jsd,
                                    losses.total_variation))
    total = total + losses.reverse_kl(s, SparseLogits.from_dense(t, 7))  # rest bin holds zero mass
    total.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
