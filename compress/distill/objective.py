"""The training objective: one student forward, each teacher's targets (online forward or logit
cache), and the weighted sum of the losses in compress.distill.losses.

    loss = ce_weight * CE(data)
         + sum_i weight_i * ( divergence_i(student, teacher_i; T_i)
                              + feature_weight_i * mean over mapped layers of mse|cosine(P(h_s), h_t)
                              + relation_weight_i * (attention relation KL + value relation KL) )

Hidden states for the feature loss are layer-normalised (no affine) on both sides before the
loss: LLM residual streams carry a few huge channels that would otherwise swamp the MSE.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compress.distill import losses
from compress.distill.features import (Projections, capture_qkv, num_layers, parse_layer_map, relation_heads)
from compress.distill.losses import SampledLogits, SparseLogits
from compress.distill.teachers import Teacher, teacher_forward


class DistillModule(nn.Module):
    """The trainable part: the student and the feature projections (one set per teacher that
    uses a feature loss). DDP wraps this module, so both are synchronised."""

    def __init__(self, student: nn.Module, teachers: Sequence[Teacher]) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict()
        for i, t in enumerate(teachers):
            if t.spec.feature_weight > 0:
                layer_map = parse_layer_map(t.spec.layer_map, num_layers(student), num_layers(t.model))
                self.projections[str(i)] = Projections(layer_map, student.config.hidden_size,
                                                       t.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, hidden: bool, qkv_layer: int | None,
                body_only: bool = False) -> tuple[Any, dict, dict]:
        """body_only: the decoder without the output head (out.last_hidden_state, no logits)."""
        model = self.student.get_decoder() if body_only else self.student
        with capture_qkv(self.student, qkv_layer) if qkv_layer is not None else contextlib.nullcontext({}) as found:
            out = model(input_ids=input_ids, output_hidden_states=hidden, use_cache=False)
        projected = {k: p(out.hidden_states) for k, p in self.projections.items()} if hidden else {}
        return out, dict(found), projected


@dataclass
class LossParts:
    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


def _trim(t: torch.Tensor | SparseLogits, n_vocab: int | None, start: int = 0,
          stop: int = -1) -> torch.Tensor | SparseLogits:
    """Positions [start, stop) (by default all but the last, which predicts past the window) and
    no padded vocabulary rows."""
    if isinstance(t, SparseLogits):
        return SparseLogits(t.indices[:, start:stop], t.values[:, start:stop], t.rest_lse[:, start:stop],
                            t.temperature)
    if isinstance(t, SampledLogits):
        return SampledLogits(t.indices[:, start:stop], t.temperature)
    return t[:, start:stop, :n_vocab] if n_vocab else t[:, start:stop]


def _norm(h: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(h.float(), h.shape[-1:])


def _teacher_terms(i: int, teacher: Teacher, s_logits: torch.Tensor | None, inner: DistillModule, qkv: dict,
                   projected: dict, ids: torch.Tensor, cached: SparseLogits | None, n_vocab: int | None,
                   qkv_layer: int, autocast: Any, weights: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], Any]:
    """`weights` (B, L): per-token weights of the corpus; the logit divergence weighs each
    predicted token by its target's weight, the feature loss counts the positions whose next token
    has weight (the relation losses compare whole attention maps and are not masked). Returns the
    terms and the teacher's targets (its logits, or the cached ones)."""
    spec = teacher.spec
    terms: dict[str, torch.Tensor] = {}
    if cached is not None:
        t_logits: torch.Tensor | SparseLogits = cached
        t_out = None
    else:
        with autocast():
            t_out = teacher_forward(teacher, ids, hidden=spec.feature_weight > 0,
                                    qkv_layer=qkv_layer if spec.relation_weight > 0 else None)
        t_logits = t_out.logits
    target_weights = weights[:, 1:] if weights is not None else None
    if s_logits is not None:   # None: the chunked head computes the divergence (_chunked_logit_terms)
        terms[f"t{i}_{spec.loss}"] = losses.divergence(spec.loss, s_logits, _trim(t_logits, n_vocab),
                                                       temperature=spec.temperature, beta=spec.beta,
                                                       mask=target_weights)
    if spec.feature_weight > 0:
        feat = losses.hidden_mse if spec.feature_loss == "mse" else losses.hidden_cosine
        layer_map = inner.projections[str(i)].layer_map
        mask = None
        if weights is not None:   # hidden state t predicts token t + 1
            mask = torch.cat([weights[:, 1:] != 0, torch.zeros_like(weights[:, :1], dtype=torch.bool)], 1)
        vals = [feat(_norm(p), _norm(t_out.hidden[t]), mask) for p, (_, t) in zip(projected[str(i)], layer_map)]
        terms[f"t{i}_feature"] = torch.stack(vals).mean() * spec.feature_weight
    if spec.relation_weight > 0:
        heads = teacher.extra["relation_heads"]
        attn = losses.attention_relation_kl(qkv["q"], qkv["k"], t_out.qkv["q"], t_out.qkv["k"], heads)
        value = losses.value_relation_kl(qkv["v"], t_out.qkv["v"], heads)
        terms[f"t{i}_relation"] = (attn + value) * spec.relation_weight
    return terms, t_logits


def _n_vocab(t: Teacher, inner: DistillModule) -> int | None:
    if t.model is not None and t.model.config.vocab_size != inner.student.config.vocab_size:
        return len(t.tokenizer)  # same tokenizer, padded embeddings: compare the real tokens
    return None


def _head_logits(student: nn.Module, h: torch.Tensor) -> torch.Tensor:
    logits = student.get_output_embeddings()(h)
    cap = getattr(student.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _chunked_logit_terms(inner: DistillModule, teachers: Sequence[Teacher], h: torch.Tensor, ids: torch.Tensor,
                         targets: Sequence[Any], ce_weight: float, autocast: Any, weights: torch.Tensor | None,
                         chunk: int) -> dict[str, torch.Tensor]:
    """The cross-entropy and every teacher's divergence, `chunk` positions at a time: each chunk's
    head + losses run under torch.utils.checkpoint, so one chunk's logits exist at a time, in the
    forward and again in the backward. The losses are per-position means; with per-position
    weights w (1 / positions without corpus weights, the corpus weights with them) a mean is
    sum(loss * w) / batch, which adds up over chunks to exactly the whole window's."""
    from torch.utils.checkpoint import checkpoint

    n = ids.shape[1] - 1
    w = weights[:, 1:].float() if weights is not None else torch.full((ids.shape[0], n), 1.0 / n, device=ids.device)
    names = (["ce"] if ce_weight > 0 or not teachers else []) + [f"t{i}_{t.spec.loss}" for i, t in enumerate(teachers)]

    def part(h_chunk: torch.Tensor, a: int, b: int) -> torch.Tensor:
        with autocast():
            s = _head_logits(inner.student, h_chunk)
        vals = []
        if names[0] == "ce":
            vals.append(losses.weighted_cross_entropy(s, ids[:, 1 + a:1 + b], w[:, a:b]))
        for t, target in zip(teachers, targets):
            nv = _n_vocab(t, inner)
            vals.append(losses.divergence(t.spec.loss, s[..., :nv] if nv else s, _trim(target, nv, a, b),
                                          temperature=t.spec.temperature, beta=t.spec.beta, mask=w[:, a:b]))
        return torch.stack(vals)

    total = sum(checkpoint(part, h[:, a:min(a + chunk, n)], a, min(a + chunk, n), use_reentrant=False)
                for a in range(0, n, chunk))
    return dict(zip(names, total.unbind()))


def compute_loss(module: nn.Module, teachers: Sequence[Teacher], ids: torch.Tensor,
                 cached: Sequence[SparseLogits | None], ce_weight: float, relation_layer: int,
                 autocast: Any, weights: torch.Tensor | None = None, head_chunk: int = 0) -> LossParts:
    """Loss of one micro-batch `ids` (B, L). `module` is the DistillModule, maybe DDP-wrapped.
    `weights` (B, L): per-token weights of the corpus (prompt -> target corpora: zero on prompts and
    padding), applied to the cross-entropy and to every teacher's divergence and feature loss.
    head_chunk > 0: the output head and the logit losses run that many positions at a time."""
    inner = module.module if hasattr(module, "module") else module
    if head_chunk > 0:
        return _chunked_loss(module, inner, teachers, ids, cached, ce_weight, relation_layer, autocast, weights,
                             head_chunk)
    hidden = any(t.spec.feature_weight > 0 for t in teachers)
    relation = any(t.spec.relation_weight > 0 for t in teachers)
    with autocast():
        out, qkv, projected = module(ids, hidden, relation_layer if relation else None)
    s_logits = out.logits[:, :-1]
    terms: dict[str, torch.Tensor] = {}
    if ce_weight > 0 or not teachers:
        ce = (losses.cross_entropy(s_logits, ids[:, 1:]) if weights is None
              else losses.weighted_cross_entropy(s_logits, ids[:, 1:], weights[:, 1:]))
        terms["ce"] = ce * (ce_weight if teachers else 1.0)
    for i, t in enumerate(teachers):
        n_vocab = _n_vocab(t, inner)
        s = s_logits[..., :n_vocab] if n_vocab else s_logits
        terms_i, _ = _teacher_terms(i, t, s, inner, qkv, projected, ids, cached[i], n_vocab,
                                    relation_layer, autocast, weights)
        for name, value in terms_i.items():
            terms[name] = value * t.spec.weight
    total = torch.stack(list(terms.values())).sum()
    return LossParts(total, {k: float(v.detach()) for k, v in terms.items()})


def _chunked_loss(module: nn.Module, inner: DistillModule, teachers: Sequence[Teacher], ids: torch.Tensor,
                  cached: Sequence[SparseLogits | None], ce_weight: float, relation_layer: int, autocast: Any,
                  weights: torch.Tensor | None, head_chunk: int) -> LossParts:
    """compute_loss with the output head and logit losses chunked (_chunked_logit_terms); the
    feature and relation terms see the decoder's hidden states as in the whole-window path."""
    hidden = any(t.spec.feature_weight > 0 for t in teachers)
    relation = any(t.spec.relation_weight > 0 for t in teachers)
    with autocast():
        out, qkv, projected = module(ids, hidden, relation_layer if relation else None, True)
    terms: dict[str, torch.Tensor] = {}
    targets = []
    for i, t in enumerate(teachers):
        extra, target = _teacher_terms(i, t, None, inner, qkv, projected, ids, cached[i], _n_vocab(t, inner),
                                       relation_layer, autocast, weights)
        targets.append(target)
        terms.update({name: value * t.spec.weight for name, value in extra.items()})
    logit_terms = _chunked_logit_terms(inner, teachers, out.last_hidden_state[:, :-1], ids, targets, ce_weight,
                                       autocast, weights, head_chunk)
    for name, value in logit_terms.items():
        if name == "ce":
            terms[name] = value * (ce_weight if teachers else 1.0)
        else:
            terms[name] = value * teachers[int(name[1:].split("_")[0])].spec.weight
    total = torch.stack(list(terms.values())).sum()
    return LossParts(total, {k: float(v.detach()) for k, v in terms.items()})


def prepare_teachers(student: nn.Module, teachers: Sequence[Teacher]) -> None:
    for t in teachers:
        if t.spec.relation_weight > 0:
            t.extra["relation_heads"] = relation_heads(student, t.model)
