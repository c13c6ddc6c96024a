"""Teachers: one or many, each with a weight and its own loss mix; loaded from any source (a GGUF
is dequantized by compress.checkpoint), optionally quantized to 4-bit NF4 with bitsandbytes;
frozen (no gradients, eval mode). Every loss feeds the same token ids to teacher and student, so
a teacher must use the student's tokenizer: `check_same_tokenizer` names what differs.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from compress.distill.losses import DIVERGENCES
from compress.errors import SlimkitError

FEATURE_LOSSES = ("mse", "cosine")
QUANTIZE = ("nf4",)


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher and its loss mix: weight * (logit divergence + feature_weight * feature loss
    + relation_weight * (attention relation + value relation))."""

    source: str
    weight: float = 1.0
    loss: str = "fkl"  # fkl | rkl | jsd | tv
    beta: float = 0.5  # jsd only
    temperature: float = 1.0
    feature_loss: str = "mse"  # mse | cosine
    feature_weight: float = 0.0
    relation_weight: float = 0.0
    layer_map: str = "uniform"  # or "S:T,S:T" hidden-state indices
    quantize: str | None = None  # None | "nf4"

    def __post_init__(self) -> None:
        if self.loss not in DIVERGENCES:
            raise SlimkitError(f"unknown --loss {self.loss!r}; choose one of {', '.join(DIVERGENCES)}")
        if self.loss == "jsd" and not 0 < self.beta < 1:
            raise SlimkitError(f"--beta must be strictly between 0 and 1, got {self.beta}")
        if self.temperature <= 0:
            raise SlimkitError(f"--temperature must be positive, got {self.temperature}")
        if self.feature_loss not in FEATURE_LOSSES:
            raise SlimkitError(f"unknown --feature-loss {self.feature_loss!r}; choose mse or cosine")
        if self.weight < 0 or self.feature_weight < 0 or self.relation_weight < 0:
            raise SlimkitError("teacher, feature and relation weights must be >= 0")
        if self.quantize not in (None, *QUANTIZE):
            raise SlimkitError(f"unknown teacher quantization {self.quantize!r}; choose nf4 or none")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Teacher:
    spec: TeacherSpec
    model: Any  # frozen transformers model, or None when the logit cache serves everything
    tokenizer: Any
    identity: str  # weights hash when known, else the source: names the teacher in a logit cache
    extra: dict[str, Any] = field(default_factory=dict)


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, teacher_name: str) -> None:
    """Raise a one-line SlimkitError naming the first difference between the two tokenizers."""
    diffs = []
    if len(student_tok) != len(teacher_tok):
        diffs.append(f"vocabulary size {len(teacher_tok)} (teacher) vs {len(student_tok)} (student)")
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        a, b = getattr(teacher_tok, key, None), getattr(student_tok, key, None)
        if a != b:
            diffs.append(f"{key} {a!r} (teacher) vs {b!r} (student)")
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t_vocab != s_vocab:
        only_t = sorted(set(t_vocab) - set(s_vocab), key=t_vocab.get)[:1]
        moved = sorted((t for t in set(t_vocab) & set(s_vocab) if t_vocab[t] != s_vocab[t]), key=t_vocab.get)[:1]
        if moved:
            diffs.append(f"token {moved[0]!r} has id {t_vocab[moved[0]]} (teacher) vs {s_vocab[moved[0]]} (student)")
        if only_t:
            diffs.append(f"token {only_t[0]!r} (id {t_vocab[only_t[0]]}) is only in the teacher's vocabulary")
        if not moved and not only_t:
            diffs.append("the student's vocabulary has tokens the teacher lacks")
    if diffs:
        raise SlimkitError(f"teacher {teacher_name} and the student use different tokenizers ({'; '.join(diffs)}); "
                           "distillation feeds the same token ids to both: use a teacher with the student's tokenizer")


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def quantize_nf4(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Replace every nn.Linear except the output head with bitsandbytes' 4-bit NF4 Linear4bit
    (quantization happens when the weight is moved to the device; bitsandbytes >= 0.48 runs it
    on CPU too). Only the module swap is written here: bitsandbytes does the numerics."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise SlimkitError("NF4 teachers need bitsandbytes: pip install 'slimkit[nf4]'") from None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or name == "lm_head":
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.float32, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data.contiguous(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q.to(device))
    return model


def load_teacher(spec: TeacherSpec, student_tokenizer: Any, device: str | torch.device = "cpu",
                 with_model: bool = True) -> Teacher:
    """Load, check the tokenizer, freeze, optionally quantize. `with_model=False` keeps only the
    tokenizer and identity (the logit cache serves the teacher's logits)."""
    from compress.checkpoint import load

    ckpt = load(spec.source)
    check_same_tokenizer(student_tokenizer, ckpt.tokenizer, spec.source)
    identity = ckpt.history.get("weights_sha256") or ckpt.history.get("source_sha256") or spec.source
    if spec.quantize:
        identity = f"{identity}+{spec.quantize}"
    if not with_model:
        return Teacher(spec, None, ckpt.tokenizer, identity)
    model = freeze(ckpt.model)
    if spec.quantize == "nf4":
        model = quantize_nf4(model, device)
    return Teacher(spec, model.to(device), ckpt.tokenizer, identity)


@dataclass
class TeacherOutput:
    logits: torch.Tensor  # (B, L, V)
    hidden: tuple[torch.Tensor, ...] | None = None
    qkv: dict[str, torch.Tensor] | None = None


@torch.no_grad()
def teacher_forward(teacher: Teacher, input_ids: torch.Tensor, hidden: bool = False,
                    qkv_layer: int | None = None) -> TeacherOutput:
    from compress.distill.features import capture_qkv

    with capture_qkv(teacher.model, qkv_layer) if qkv_layer is not None else contextlib.nullcontext({}) as found:
        out = teacher.model(input_ids=input_ids, output_hidden_states=hidden, use_cache=False)
    return TeacherOutput(out.logits, out.hidden_states if hidden else None,
                         dict(found) if qkv_layer is not None else None)


def make_specs(sources: Sequence[str], weights: Sequence[float] | None = None, **mix: Any) -> list[TeacherSpec]:
    """One TeacherSpec per source with the same loss mix (the CLI's form). Weights default to
    1/n each; when given there must be one per teacher."""
    if weights and len(weights) != len(sources):
        raise SlimkitError(f"{len(weights)} --teacher-weight values for {len(sources)} --teacher sources; "
                           "give one weight per teacher, in the same order")
    weights = list(weights) if weights else [1.0 / max(len(sources), 1)] * len(sources)
    return [TeacherSpec(source, weight, **mix) for source, weight in zip(sources, weights)]
