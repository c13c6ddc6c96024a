"""DistillConfig: everything about a distillation run except the models and the data files."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from compress.errors import SlimkitError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class DistillConfig:
    VERSION: ClassVar[int] = 1  # of the to_dict/from_dict form (compress.config_io)
    tokens: int  # training budget: optimizer steps = ceil(tokens / (batch_size * seq_len))
    seq_len: int = 512
    batch_size: int = 8  # windows per optimizer step, over all ranks
    micro_batch: int = 1  # windows per forward pass on one rank (gradient accumulation fills the rest)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    ce_weight: float = 0.0  # weight of cross-entropy on the data (alone when there is no teacher)
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    eval_windows: int = 16  # held-out windows scored per evaluation (at most)
    save_every: int = 0  # optimizer steps; 0 = no intermediate checkpoints
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto = bf16 autocast on CUDA with bf16 and on CPUs with native bf16, else fp32
    seed: int = 0
    heldout_fraction: float = 0.05
    logit_cache: str | None = None  # directory of the offline teacher-logit cache
    top_k: int = 64
    sampled_logits: int = 0  # > 0: the training cache holds this many teacher draws per token instead of the top-k
    data_free_tokens: int | None = None  # teacher-sampled corpus size when no data is given (default: tokens)
    blockwise_tokens: int = 0  # > 0: block-wise distillation of a pruned student on this many tokens first
    relation_layer: int = -1  # decoder layer whose q/k/v feed the relation losses (MiniLM: the last)
    head_chunk: int = 0  # > 0: output head + logit losses over this many positions at a time (recomputed in backward)

    def __post_init__(self) -> None:
        positive = ("tokens", "seq_len", "batch_size", "micro_batch", "top_k", "eval_windows", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise SlimkitError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise SlimkitError(f"--seq-len must be at least 2, got {self.seq_len}")
        if self.lr <= 0 or self.grad_clip < 0 or self.ce_weight < 0:
            raise SlimkitError("--lr must be > 0, --grad-clip and --ce-weight >= 0")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise SlimkitError("warmup fraction must be in [0, 1) and min lr ratio in [0, 1]")
        if not 0 <= self.heldout_fraction < 1:
            raise SlimkitError(f"held-out fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.precision not in PRECISIONS:
            raise SlimkitError(f"unknown --precision {self.precision!r}; choose {', '.join(PRECISIONS)}")
        if self.sampled_logits < 0 or (self.sampled_logits and not self.logit_cache):
            raise SlimkitError("--sampled-logits K needs --logit-cache DIR (the draws are cached) and K >= 1")
        if self.blockwise_tokens < 0:
            raise SlimkitError(f"--blockwise-tokens must be >= 0, got {self.blockwise_tokens}")
        if self.head_chunk < 0:
            raise SlimkitError(f"--head-chunk must be >= 0 (0: the whole window at once), got {self.head_chunk}")
        if self.eval_every < 0 or self.save_every < 0:
            raise SlimkitError("--eval-every and --save-every must be >= 0")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def steps(self) -> int:
        return -(-self.tokens // self.tokens_per_step)

    def accumulation(self, world: int) -> int:
        per_step = world * self.micro_batch
        if self.batch_size % per_step:
            raise SlimkitError(f"--batch-size {self.batch_size} is not a multiple of ranks x --micro-batch "
                               f"({world} x {self.micro_batch}); choose sizes that divide")
        return self.batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        from compress import config_io

        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        from compress import config_io

        return config_io.from_dict(cls, d)

    # Fields that may change between an interrupted run and its resumption without changing the result.
    RESUME_FREE: ClassVar[tuple[str, ...]] = ("eval_every", "save_every", "keep_checkpoints")
