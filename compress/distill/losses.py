"""Distillation losses as pure functions of tensors (no modules, no state).

Conventions
- Logits are aligned: `student[..., v]` and `teacher[..., v]` describe the same position; the
  trainer does the next-token shift. `mask` (same leading shape) says which positions count: a
  bool mask makes every loss a mean over the selected positions; a float mask is a weight per
  position (prompt -> target corpora), reduced as weighted_cross_entropy does (summed over
  positions, averaged over the batch), so a divergence and the cross-entropy on such a corpus
  weigh the same tokens the same way and a zero-weight token (prompt, padding) never counts.
- Temperature T divides the logits of both models; divergences are multiplied by T**2 so that
  their gradients keep the same scale for every T (Hinton et al. 2015).
- A teacher is either dense logits (..., V) or a `SparseLogits` (top-k logits + the
  log-sum-exp of the other V - k logits, as the offline logit cache stores them). With a sparse
  teacher every divergence is computed on k + 1 bins: the k teacher tokens and one bin that
  merges the rest of the vocabulary, for the student too. Merging bins can only lower a
  divergence, and it is exact when the teacher's rest mass is zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compress.errors import SlimkitError

Tensor = torch.Tensor


@dataclass(frozen=True)
class SparseLogits:
    """Teacher logits compressed to the top k per position, at temperature `temperature`.

    indices: (..., k) int64 token ids, values: (..., k) logits divided by `temperature`,
    rest_lse: (...) log-sum-exp of the other V - k logits divided by `temperature`.
    """

    indices: Tensor
    values: Tensor
    rest_lse: Tensor
    temperature: float = 1.0

    def to(self, device: torch.device | str) -> "SparseLogits":
        return SparseLogits(self.indices.to(device), self.values.to(device), self.rest_lse.to(device),
                            self.temperature)

    @classmethod
    def from_dense(cls, logits: Tensor, k: int, temperature: float = 1.0) -> "SparseLogits":
        scaled = logits.float() / temperature
        values, indices = scaled.topk(k, dim=-1)  # (..., k), sorted: indices[..., 0] is the top-1
        rest = scaled.scatter(-1, indices, float("-inf"))
        return cls(indices, values, torch.logsumexp(rest, dim=-1), temperature)


@dataclass(frozen=True)
class SampledLogits:
    """Teacher targets as K tokens drawn per position from the teacher's distribution at
    temperature `temperature`, with replacement (random-sampling KD, "Sparse Logit Sampling",
    Anshumann et al. 2025). The empirical distribution p^ of the draws has E[p^] = p_teacher, and
    the forward-KL gradient with respect to the student's logits, p_student - p^ (times T), is
    linear in p^: an unbiased estimate of the full KL gradient, where the top-k form is biased.

    indices: (..., K) int64 token ids (repeats count)."""

    indices: Tensor
    temperature: float = 1.0

    def to(self, device: torch.device | str) -> "SampledLogits":
        return SampledLogits(self.indices.to(device), self.temperature)

    @classmethod
    def draw(cls, logits: Tensor, k: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> "SampledLogits":
        probs = F.softmax(logits.float() / temperature, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        idx = torch.multinomial(flat, k, replacement=True, generator=generator)
        return cls(idx.reshape(*probs.shape[:-1], k), temperature)

    def neg_entropy(self) -> Tensor:
        """(...): sum_v p^_v log p^_v = (1/K) sum_k log(c_k / K), c_k the count of draw k's token
        (from the sorted draws, so O(K log K) per position)."""
        k = self.indices.shape[-1]
        srt = self.indices.sort(-1).values.contiguous()
        counts = torch.searchsorted(srt, srt, right=True) - torch.searchsorted(srt, srt)
        return torch.log(counts.double() / k).mean(-1).float()


def sampled_forward_kl(student: Tensor, teacher: SampledLogits, temperature: float = 1.0,
                       mask: Tensor | None = None) -> Tensor:
    """KL(p^ || p_student) with p^ the empirical distribution of the teacher's draws:
    (1/K) sum_k [log(c_k / K) - log p_s(i_k)] per position (c_k: the count of draw k's token), so
    its gradient is (p_s - p^) / T * T**2 -- the full forward KL's with p^ for p_teacher."""
    if not math.isclose(teacher.temperature, temperature):
        raise SlimkitError(f"the cached teacher draws were made at temperature {teacher.temperature}, "
                           f"the loss asks for {temperature}; rebuild the logit cache or use its temperature")
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    picked = log_s.gather(-1, teacher.indices)
    per_pos = teacher.neg_entropy() - picked.mean(-1)
    return _masked_mean(per_pos, mask) * temperature**2


def log_probs_pair(student: Tensor, teacher: Tensor | SparseLogits, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(log p_student, log p_teacher) over the same bins: the full vocabulary for a dense teacher,
    the teacher's k tokens + one rest bin for a sparse one. Shapes (..., V) or (..., k + 1)."""
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    if not isinstance(teacher, SparseLogits):
        return log_s, F.log_softmax(teacher.float() / temperature, dim=-1)
    if not math.isclose(teacher.temperature, temperature):
        raise SlimkitError(f"the cached teacher logits were made at temperature {teacher.temperature}, "
                           f"the loss asks for {temperature}; rebuild the logit cache or use its temperature")
    total = torch.logaddexp(torch.logsumexp(teacher.values, dim=-1), teacher.rest_lse)  # (...)
    log_t = torch.cat([teacher.values, teacher.rest_lse.unsqueeze(-1)], dim=-1) - total.unsqueeze(-1)
    top_s = log_s.gather(-1, teacher.indices)  # (..., k)
    # log(1 - sum_k p_s): log1p(-x) of a mass in [0, 1], clamped so a rounding overshoot is finite.
    rest_s = torch.log1p(-top_s.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.cat([top_s, rest_s.unsqueeze(-1)], dim=-1), log_t


def _masked_mean(per_position: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_position.mean()
    if mask.is_floating_point():   # per-position weights (see the module docstring)
        return (per_position * mask.to(per_position.dtype)).sum() / per_position.shape[0]
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per position, summed over the last dim; 0 * log 0 counts as 0."""
    p = log_p.exp()
    live = p > 0  # zero the -inf logs first, so neither the value nor its gradient sees inf - inf
    zero = torch.zeros_like(p)
    return (p * (torch.where(live, log_p, zero) - torch.where(live, log_q, zero))).sum(-1)


def forward_kl(student: Tensor, teacher: Tensor | SparseLogits, temperature: float = 1.0,
               mask: Tensor | None = None) -> Tensor:
    """KL(teacher || student): mean-seeking, the classic KD loss."""
    log_s, log_t = log_probs_pair(student, teacher, temperature)
    return _masked_mean(_kl(log_t, log_s), mask) * temperature**2


def reverse_kl(student: Tensor, teacher: Tensor | SparseLogits, temperature: float = 1.0,
               mask: Tensor | None = None) -> Tensor:
    """KL(student || teacher): mode-seeking (MiniLLM)."""
    log_s, log_t = log_probs_pair(student, teacher, temperature)
    return _masked_mean(_kl(log_s, log_t), mask) * temperature**2


def generalized_jsd(student: Tensor, teacher: Tensor | SparseLogits, beta: float = 0.5,
                    temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Generalized JSD of GKD (Agarwal et al. 2024): with M = beta p_t + (1 - beta) p_s,
    beta KL(p_t || M) + (1 - beta) KL(p_s || M). beta = 0.5 is the symmetric JSD."""
    if not 0.0 < beta < 1.0:
        raise SlimkitError(f"--beta must be strictly between 0 and 1, got {beta} "
                           "(use --loss fkl or --loss rkl for the end points)")
    log_s, log_t = log_probs_pair(student, teacher, temperature)
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1 - beta))
    per_pos = beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)
    return _masked_mean(per_pos, mask) * temperature**2


def total_variation(student: Tensor, teacher: Tensor | SparseLogits, temperature: float = 1.0,
                    mask: Tensor | None = None) -> Tensor:
    """Total variation distance 0.5 * sum |p_t - p_s| (bounded in [0, 1]; not scaled by T**2)."""
    log_s, log_t = log_probs_pair(student, teacher, temperature)
    return _masked_mean(0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1), mask)


DIVERGENCES = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": generalized_jsd, "tv": total_variation}


def divergence(name: str, student: Tensor, teacher: Tensor | SparseLogits | SampledLogits, *,
               temperature: float = 1.0, beta: float = 0.5, mask: Tensor | None = None) -> Tensor:
    if name not in DIVERGENCES:
        raise SlimkitError(f"unknown logit loss {name!r}; choose one of {', '.join(DIVERGENCES)}")
    if isinstance(teacher, SampledLogits):
        if name != "fkl":
            raise SlimkitError(f"sampled teacher logits estimate the forward KL only; use --loss fkl (got {name}) "
                               "or a top-k logit cache")
        return sampled_forward_kl(student, teacher, temperature, mask)
    if name == "jsd":
        return generalized_jsd(student, teacher, beta, temperature, mask)
    return DIVERGENCES[name](student, teacher, temperature, mask)


def cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean next-token cross-entropy on the data (logits (..., V) aligned with targets (...))."""
    per_pos = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none")
    return _masked_mean(per_pos.view(targets.shape), mask)


def weighted_cross_entropy(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Next-token cross-entropy with a weight per target position (B, L), summed over positions and
    averaged over the batch: with weights alpha / n_target_tokens per example this is the mean over
    examples of alpha * (mean NLL of the example's target), the multi-task loss of rationale
    distillation (Distilling Step-by-Step, TinyLLM)."""
    per_pos = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none")
    return (per_pos.view(targets.shape) * weights.to(per_pos.dtype)).sum() / targets.shape[0]


def hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between (projected) student and teacher hidden states (..., d)."""
    return _masked_mean((student.float() - teacher.float()).pow(2).mean(-1), mask)


def hidden_cosine(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 - cosine similarity between (projected) student and teacher hidden states (..., d)."""
    return _masked_mean(1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1), mask)


def _relation_log_probs(x: Tensor, y: Tensor, heads: int) -> Tensor:
    """log softmax(x_r y_r^T / sqrt(d_r)) over causal keys for each relation head r.

    x, y: (B, L, D) with D divisible by `heads` -> (B, heads, L, L)."""
    b, n, d = x.shape
    if d % heads:
        raise SlimkitError(f"relation heads {heads} do not divide the projection width {d}")
    xr = x.float().view(b, n, heads, d // heads).transpose(1, 2)  # (B, R, L, d_r)
    yr = y.float().view(b, n, heads, d // heads).transpose(1, 2)
    scores = xr @ yr.transpose(-1, -2) / math.sqrt(d // heads)  # (B, R, L, L)
    causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    return F.log_softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def _relation_kl(log_t: Tensor, log_s: Tensor) -> Tensor:
    """Mean over (B, R, L) rows of KL(teacher row || student row)."""
    return _kl(log_t, log_s).mean()


def attention_relation_kl(q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, heads: int) -> Tensor:
    """MiniLM attention transfer: KL between teacher and student self-attention distributions
    softmax(q k^T / sqrt(d)) (causal), computed on `heads` relation heads of the concatenated
    queries/keys (MiniLMv2), so teacher and student may have different head counts and widths."""
    return _relation_kl(_relation_log_probs(q_t, k_t, heads), _relation_log_probs(q_s, k_s, heads))


def value_relation_kl(v_s: Tensor, v_t: Tensor, heads: int) -> Tensor:
    """MiniLM value-relation transfer: KL between softmax(v v^T / sqrt(d)) of teacher and student."""
    return _relation_kl(_relation_log_probs(v_t, v_t, heads), _relation_log_probs(v_s, v_s, heads))
