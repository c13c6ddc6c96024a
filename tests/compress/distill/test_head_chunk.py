"""The chunked output head (--head-chunk) computes the same loss and the same gradients as the
whole window at once, for every kind of target (online teacher with feature and relation terms,
top-k cache, sampled cache), with and without per-token weights, and with a window length that
is not a multiple of the chunk."""
from __future__ import annotations

import pytest
import torch
from distill_fixtures import ROOT, one_thread  # noqa: F401

from compress.distill.losses import SampledLogits, SparseLogits
from compress.distill.objective import DistillModule, compute_loss, prepare_teachers
from compress.distill.teachers import Teacher, TeacherSpec, freeze



def _run(module, teachers, ids, cached, weights, chunk, ce_weight):
    module.zero_grad(set_to_none=True)
    lp = compute_loss(module, teachers, ids, cached, ce_weight, -1, lambda: torch.autocast("cpu", enabled=False),
                      weights, head_chunk=chunk)
    lp.total.backward()
    return lp, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("target", ["online", "topk", "sampled", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_head_matches_the_whole_window(target, weighted):
    student = ROOT.tiny_llama(0).model.train()
    tok = ROOT.tiny_tokenizer()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (2, 19), generator=g)   # 18 predicted positions: chunks of 5 leave 3
    weights = None
    if weighted:
        weights = torch.zeros(2, 19)
        weights[:, 5:15] = 0.1
    teacher_model = freeze(ROOT.tiny_llama(1).model)
    spec = TeacherSpec("t", feature_weight=1.0 if target == "online" else 0.0,
                       relation_weight=1.0 if target == "online" else 0.0)
    teachers = [] if target == "none" else [Teacher(spec, teacher_model, tok, "t")]
    prepare_teachers(student, teachers)
    module = DistillModule(student, teachers)
    cached: list = [None] * len(teachers)
    with torch.no_grad():
        dense = teacher_model(input_ids=ids).logits
    if target == "topk":
        cached = [SparseLogits.from_dense(dense, 8)]
    elif target == "sampled":
        cached = [SampledLogits.draw(dense, 16, generator=torch.Generator().manual_seed(1))]
    whole, g_whole = _run(module, teachers, ids, cached, weights, 0, 0.5)
    chunked, g_chunked = _run(module, teachers, ids, cached, weights, 5, 0.5)
    assert set(chunked.parts) == set(whole.parts)
    for k in whole.parts:
        assert chunked.parts[k] == pytest.approx(whole.parts[k], rel=1e-5, abs=1e-7), k
    assert chunked.total.item() == pytest.approx(whole.total.item(), rel=1e-5)
    assert set(g_chunked) == set(g_whole)
    for n in g_whole:
        torch.testing.assert_close(g_chunked[n], g_whole[n], rtol=1e-4, atol=1e-6, msg=n)


def test_head_chunk_must_not_be_negative():
    from compress.distill.config import DistillConfig
    from compress.errors import SlimkitError

    with pytest.raises(SlimkitError, match="--head-chunk must be >= 0"):
        DistillConfig(tokens=100, head_chunk=-1)
