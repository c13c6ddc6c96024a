"""The KD terms respect per-token weights: a zero-weight token (padding, a prompt) changes
neither the divergence nor the feature loss, and weights scale the divergence as they scale the
cross-entropy."""
from __future__ import annotations

import pytest
import torch
from distill_fixtures import ROOT, one_thread  # noqa: F401

from compress.distill import losses
from compress.distill.objective import DistillModule, compute_loss, prepare_teachers
from compress.distill.teachers import Teacher, TeacherSpec, freeze


def _setup(feature_weight: float):
    student = ROOT.tiny_llama(0).model.eval()
    tok = ROOT.tiny_tokenizer()
    spec = TeacherSpec("t", feature_weight=feature_weight)
    teachers = [Teacher(spec, freeze(ROOT.tiny_llama(1).model), tok, "t")]
    prepare_teachers(student, teachers)
    return DistillModule(student, teachers), teachers, len(tok)


def _loss(module, teachers, ids, weights):
    return compute_loss(module, teachers, ids, [None], ce_weight=0.0, relation_layer=-1,
                        autocast=lambda: torch.autocast("cpu", enabled=False), weights=weights)


@pytest.mark.parametrize("feature_weight", [0.0, 1.0])
def test_zero_weight_tokens_do_not_change_the_kd_loss(feature_weight):
    module, teachers, vocab = _setup(feature_weight)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 16), generator=g)
    weights = torch.zeros(2, 16)
    weights[:, 4:12] = 1.0 / 8   # a prompt (0-3), a target (4-11), padding (12-15)
    changed = ids.clone()
    changed[:, 12:] = torch.randint(0, vocab, (2, 4), generator=g)   # other padding tokens
    with torch.no_grad():
        a, b = _loss(module, teachers, ids, weights), _loss(module, teachers, changed, weights)
        plain_a, plain_b = _loss(module, teachers, ids, None), _loss(module, teachers, changed, None)
    assert a.total.item() == pytest.approx(b.total.item(), rel=1e-6)
    assert abs(plain_a.total.item() - plain_b.total.item()) > 1e-4   # without weights the padding counts
    if feature_weight:
        assert a.parts["t0_feature"] == pytest.approx(b.parts["t0_feature"], rel=1e-6)


def test_weights_reduce_the_divergence_like_the_cross_entropy():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 7, 11, generator=g), torch.randn(3, 7, 11, generator=g)
    w = torch.rand(3, 7, generator=g)
    per_pos = losses._kl(torch.log_softmax(t, -1), torch.log_softmax(s, -1))
    assert losses.forward_kl(s, t, mask=w).item() == pytest.approx(((per_pos * w).sum() / 3).item(), rel=1e-6)
    bool_mask = w > 0.5
    assert losses.forward_kl(s, t, mask=bool_mask).item() == pytest.approx(per_pos[bool_mask].mean().item(), rel=1e-6)
