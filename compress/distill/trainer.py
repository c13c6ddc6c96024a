"""The distillation loop: AdamW, linear warmup then cosine, gradient accumulation, bf16 autocast
where supported, clipping, periodic evaluation and checkpoints, exact resume, DDP. The data it
sees, and in which order: compress.distill.order.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from compress.checkpoint import Checkpoint, load, save
from compress.data import Corpus
from compress.evaluate import safe_exp
from compress.distill import fingerprint as fingerprints
from compress.distill import losses
from compress.distill.config import DistillConfig
from compress.distill.caches import cache_complete, cache_identity, open_caches
from compress.distill.objective import DistillModule, compute_loss, prepare_teachers
from compress.distill.order import (autocast_for, run_corpus, seed_all, micro_positions, training_weights,
                                    training_windows, trim_padding, window_order)
from compress.distill.parallel import Dist
from compress.distill.state import PREFIX, checkpoints, restore_checkpoint, save_checkpoint, state_dir
from compress.distill.teachers import Teacher, TeacherSpec, load_teacher
from compress.errors import SlimkitError
from compress.quant.qat import QATPlan, convert_qat, prepare_qat

Callback = Callable[[int, dict[str, Any]], None]


@dataclass
class DistillResult:
    out: Path
    steps: int
    tokens: int
    tokens_per_s: float
    evals: list[dict[str, Any]] = field(default_factory=list)
    main_rank: bool = True  # under torchrun only rank 0 reports


@torch.no_grad()
def evaluate(student: Any, teacher: Teacher | None, eval_cache: Any, heldout: torch.Tensor, cfg: DistillConfig,
             dist: Dist, autocast: Callable[[], Any], heldout_weights: torch.Tensor | None = None) -> dict[str, float]:
    """Held-out perplexity (of the target tokens, when the corpus has weights), and
    KL(teacher || student) + top-1 agreement with teacher 0 (T = 1)."""
    windows = heldout[:cfg.eval_windows]
    sums = [0.0, 0.0, 0.0, 0.0]  # nll, tokens, kl * tokens, agreeing tokens
    was_training = student.training
    student.eval()
    for i in range(dist.rank, windows.shape[0], dist.world):
        ids = windows[i:i + 1]
        if heldout_weights is not None:
            ids = trim_padding(ids, heldout_weights[i:i + 1])[0]
        ids = ids.to(dist.device)
        with autocast():
            s = student(input_ids=ids, use_cache=False).logits[:, :-1].float()
        n = s.shape[1]
        if heldout_weights is not None:  # prompt -> target examples: score the targets only
            mask = heldout_weights[i:i + 1, 1:ids.shape[1]].to(dist.device) > 0
            n = int(mask.sum())
            sums[0] += float(losses.cross_entropy(s, ids[:, 1:], mask)) * n
        else:
            sums[0] += float(losses.cross_entropy(s, ids[:, 1:])) * n
        sums[1] += n
        t: Any = None
        if eval_cache is not None:
            sp = eval_cache.get([i]).to(dist.device)
            t = losses.SparseLogits(sp.indices[:, :-1], sp.values[:, :-1], sp.rest_lse[:, :-1], 1.0)
            top1 = t.indices[..., 0]
        elif teacher is not None and teacher.model is not None:
            with autocast():
                t = teacher.model(input_ids=ids, use_cache=False).logits[:, :-1, :s.shape[-1]].float()
            top1 = t.argmax(-1)
        if t is not None:
            sums[2] += float(losses.forward_kl(s, t)) * n
            sums[3] += float((s.argmax(-1) == top1.to(s.device)).sum())
    student.train(was_training)
    nll, count, kl, agree = dist.sum(sums)
    result = {"heldout_ppl": safe_exp(nll / max(count, 1)), "heldout_tokens": int(count)}
    if eval_cache is not None or (teacher is not None and teacher.model is not None):
        result.update(kl_to_teacher=kl / max(count, 1), top1_agreement=agree / max(count, 1))
    return result


def distill(student_source: str | Path, teachers: Sequence[TeacherSpec], out: str | Path, cfg: DistillConfig,
            data: Sequence[str | Path] = (), resume: bool = False, progress: bool = True,
            callback: Callback | None = None, qat: QATPlan | None = None, corpus: Corpus | None = None,
            stage: tuple[str, dict[str, Any]] | None = None) -> DistillResult:
    """Distil `teachers` into the student; write the result to OUT (a slimkit checkpoint).

    With `qat` the student trains through fake-quantized GGUF blocks (quantization-aware
    distillation) and OUT also holds the trained blocks the GGUF writer stores as they are.
    `corpus`: a prebuilt corpus instead of `data` (e.g. prompt -> target examples with weights);
    `stage`: (history stage name, extra config that must match on resume) for callers built on it.
    """
    if cfg.sampled_logits and any(t.loss != "fkl" for t in teachers):
        raise SlimkitError("--sampled-logits estimates the forward KL only: use --loss fkl, or a top-k cache (--top-k)")
    dist = Dist.from_env()
    try:
        fp = fingerprints.fingerprint(_resume_config(cfg, qat, stage), student_source, teachers,
                                      data if corpus is None else [])
        found = checkpoints(state_dir(Path(out)))
        if found and not resume:
            raise SlimkitError(f"{state_dir(Path(out))} holds checkpoints of an earlier run; pass --resume to "
                               "continue it or delete that directory to start over")
        if found:   # before any model is loaded
            fingerprints.check(found[-1], fp)
        run = _Run(student_source, teachers, Path(out), cfg, data, dist, progress, qat, corpus, stage, fp)
        return run.train(resume, callback)
    finally:
        dist.close()


class _Run:
    def __init__(self, student_source: str | Path, specs: Sequence[TeacherSpec], out: Path, cfg: DistillConfig,
                 data: Sequence[str | Path], dist: Dist, progress: bool, qat: QATPlan | None = None,
                 corpus: Corpus | None = None, stage: tuple[str, dict[str, Any]] | None = None,
                 fingerprint: dict[str, Any] | None = None) -> None:
        self.cfg, self.dist, self.out, self.state, self.qat = cfg, dist, out, state_dir(out), qat
        self.stage, self.fingerprint = stage, fingerprint or {}
        self.progress = progress and dist.main
        self.accum = cfg.accumulation(dist.world)
        seed_all(cfg.seed)
        self.ckpt: Checkpoint = load(student_source)
        self.ckpt.history = {**self.ckpt.history, "source": self.ckpt.history.get("source", str(student_source))}
        self.ckpt.quant = None  # training changes the weights: blocks of an earlier QAT no longer apply
        student = self.ckpt.model.to(dist.device).train()
        if qat is not None:
            init = None
            if qat.init != "rtn":  # step 0 = the calibrated blocks (deterministic, so redone on resume)
                from compress.quant.calibrated import calibrated_init

                init = calibrated_init(student, self.ckpt.tokenizer, qat)
            prepare_qat(student, qat, init=init)
        for p in student.parameters():
            p.requires_grad_(True)
        self.autocast = autocast_for(cfg, dist.device)
        tok = self.ckpt.tokenizer
        identities = [cache_identity(s, tok) for s in specs] if cfg.logit_cache else [""] * len(specs)
        self.teachers: list[Teacher] = []
        if corpus is None and not data:   # data-free: the teachers sample the corpus
            self.teachers = [load_teacher(s, tok, dist.device) for s in specs]
            corpus = run_corpus(data, tok, self.teachers, cfg, self.state, dist, self.progress)
        elif corpus is None:
            corpus = run_corpus(data, tok, [], cfg, self.state, dist, self.progress)
        self.corpus_source = corpus.source
        self.train_windows, self.heldout = training_windows(corpus, cfg), corpus.heldout
        if not self.teachers:   # a teacher whose logit caches are complete is never loaded
            self.teachers = [Teacher(s, None, tok, identities[i])
                             if cache_complete(i, s, identities[i], self.train_windows, self.heldout, cfg)
                             else load_teacher(s, tok, dist.device) for i, s in enumerate(specs)]
        self.teachers_loaded = sum(t.model is not None for t in self.teachers)
        self.blockwise = None
        if cfg.blockwise_tokens and not checkpoints(self.state):   # (a resumed run restores its weights)
            self.blockwise = self._blockwise(student, specs)
        prepare_teachers(student, self.teachers)
        self.corpus_sha = _sha(corpus.train, corpus.train_weights)   # the budget picks from it: not its subset
        self.train_weights, self.heldout_weights = training_weights(corpus, cfg), corpus.heldout_weights
        self.inner = DistillModule(student, self.teachers).to(dist.device)
        self.caches, self.eval_cache = open_caches(self.teachers, identities, self.train_windows, self.heldout,
                                                    cfg, dist, self.autocast, self.progress)
        self.module: Any = self.inner
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.module = DDP(self.inner, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW([p for p in self.inner.parameters() if p.requires_grad], lr=cfg.lr,
                                           betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        self.scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, round(cfg.warmup_fraction * cfg.steps), cfg.steps, min_lr_rate=cfg.min_lr_ratio)
        self.log_path = self.state / "train_log.jsonl"

    def _blockwise(self, student: Any, specs: Sequence[TeacherSpec]) -> dict[str, Any]:
        """Block-wise distillation from teacher 0 (compress.distill.blockwise) before the end-to-end
        stage, on the first training windows; a summary for the history."""
        from compress.distill.blockwise import blockwise

        if self.qat is not None:
            raise SlimkitError("--blockwise-tokens trains a pruned student before KD; it does not combine with QAT")
        if not specs:
            raise SlimkitError("--blockwise-tokens needs a --teacher (the student's blocks learn its hidden states)")
        teacher = self.teachers[0].model or load_teacher(specs[0], self.ckpt.tokenizer, self.dist.device).model
        n = max(1, -(-self.cfg.blockwise_tokens // self.cfg.seq_len))
        report = blockwise(student, teacher, self.train_windows[:n].to(self.dist.device), self.ckpt.history,
                           lr=self.cfg.lr * 10, batch=self.cfg.micro_batch, progress=self.progress)
        student.train()
        blocks = report["blocks"]
        return {"tokens": int(self.train_windows[:n].numel()), "seconds": report["seconds"],
                "applied": sum(b["applied"] for b in blocks),
                "rel_err_before": sum(b["rel_err_before"] for b in blocks) / len(blocks),
                "rel_err_after": sum(b["rel_err_after"] for b in blocks) / len(blocks)}

    def _resume(self, resume: bool) -> int:
        """The step to start from: 0, or the newest checkpoint's (its fingerprint was checked by
        distill() before anything was loaded).

        A run resumed with a larger token budget continues from its checkpoint; the schedule is
        the new budget's: from that step on the learning rate follows the warmup + cosine laid over
        the new total step count, as if the run had been planned that long from the start (the
        steps already taken keep the rates they had). A finished run so restarts at the cosine's
        value at its last step, above the minimum it ended on, and decays to the minimum again.
        The data is the new budget's too: when the budget is less than an epoch the windows are a
        seeded subset sized by it (training_windows), so the steps after the resume draw from the
        larger subset, in the order a run planned that long would use."""
        found = checkpoints(self.state)
        if not (resume and found):
            return 0
        saved_fp = fingerprints.read(found[-1]) or {}
        step = int(found[-1].name.removeprefix(PREFIX))
        if step > self.cfg.steps:
            raise SlimkitError(f"cannot resume from {found[-1]}: it is at step {step}, past the new budget of "
                               f"{self.cfg.steps} steps ({self.cfg.tokens} tokens); give --tokens of at least "
                               f"{step * self.cfg.tokens_per_step}, or delete {self.state} to start over")
        if saved_fp.get("windows_sha256") != self.corpus_sha:
            raise SlimkitError(f"cannot resume from {found[-1]}: the training windows changed since it was written "
                               f"(the tokenizer or the packing); delete {self.state} to start over")
        restore_checkpoint(found[-1], self.inner, self.optimizer, self.scheduler)
        for group, lam in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):   # the new budget's rate
            group["lr"] = group["initial_lr"] * lam(step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        return step

    def _micro_batch(self, step: int, micro: int) -> tuple[torch.Tensor, list, torch.Tensor | None]:
        pos = micro_positions(step, micro, self.dist.rank, self.dist.world, self.cfg)
        idx = window_order(pos, self.train_windows.shape[0], self.cfg.seed)
        cached = [c.get(idx).to(self.dist.device) if c is not None else None for c in self.caches]
        ids = self.train_windows[idx]
        weights = self.train_weights[idx] if self.train_weights is not None else None
        if weights is not None and all(c is None for c in cached):
            ids, weights = trim_padding(ids, weights)
        return ids.to(self.dist.device), cached, weights.to(self.dist.device) if weights is not None else None

    def _step(self, step: int) -> dict[str, float]:
        parts: dict[str, float] = {}
        for micro in range(self.accum):
            ids, cached, weights = self._micro_batch(step, micro)
            sync = micro == self.accum - 1 or self.dist.world == 1
            with contextlib.nullcontext() if sync else self.module.no_sync(), self._fake_quant_once():
                lp = compute_loss(self.module, self.teachers, ids, cached, self.cfg.ce_weight,
                                  self.cfg.relation_layer, self.autocast, weights, self.cfg.head_chunk)
                (lp.total / self.accum).backward()
            for k, v in {"loss": float(lp.total.detach()), **lp.parts}.items():
                parts[k] = parts.get(k, 0.0) + v / self.accum
        if self.cfg.grad_clip > 0:
            parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.inner.parameters(), self.cfg.grad_clip))
        parts["lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        keys = sorted(parts)
        return dict(zip(keys, self.dist.mean([parts[k] for k in keys])))

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            self.state.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _evaluate(self) -> dict[str, float]:
        teacher = self.teachers[0] if self.teachers else None
        with self._fake_quant_once():  # the weights do not change during an evaluation
            return evaluate(self.inner.student, teacher, self.eval_cache, self.heldout, self.cfg, self.dist,
                            self.autocast, self.heldout_weights)

    def _save(self, step: int) -> None:
        if self.dist.main:
            fp = {**self.fingerprint, "windows_sha256": self.corpus_sha}
            save_checkpoint(self.state, step, self.ckpt, self.inner, self.optimizer, self.scheduler,
                            {"config": self._config()}, self.cfg.keep_checkpoints, fingerprint=fp)
        self.dist.barrier()

    def train(self, resume: bool, callback: Callback | None) -> DistillResult:
        cfg, steps = self.cfg, self.cfg.steps
        start = self._resume(resume)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps * cfg.tokens_per_step, initial=start * cfg.tokens_per_step, unit="tok",
                       unit_scale=True, desc="distill", dynamic_ncols=True)
        evals, t0, done = [], time.perf_counter(), 0
        for step in range(start, steps):
            metrics = self._step(step)
            done += cfg.tokens_per_step
            tok_s = done / (time.perf_counter() - t0)
            metrics.update(step=step + 1, tokens=(step + 1) * cfg.tokens_per_step, tokens_per_s=tok_s)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < steps:
                metrics.update(self._evaluate())
                evals.append(metrics)
            self._log(metrics)
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{tok_s:.0f}")
                bar.update(cfg.tokens_per_step)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
                self._save(step + 1)
            if callback is not None:
                callback(step + 1, metrics)
        if bar is not None:
            bar.close()
        tok_s = done / max(time.perf_counter() - t0, 1e-9)  # training steps only, not the final evaluation
        if start < steps:   # the last state too, so a finished run can be extended to more tokens
            self._save(steps)
        final = {"step": steps, **self._evaluate()}
        evals.append(final)
        self._log(final)
        if self.dist.main:
            self._write_output(final, tok_s)
        self.dist.barrier()
        return DistillResult(self.out, steps, steps * cfg.tokens_per_step, tok_s, evals, self.dist.main)

    def _fake_quant_once(self) -> Any:
        """QAT: fake-quantize each weight once per forward pass, not once per use (a tied
        embedding/output matrix is used twice); the backward pass goes through the same values."""
        if self.qat is None:
            return contextlib.nullcontext()
        from torch.nn.utils import parametrize

        return parametrize.cached()

    def _config(self) -> dict[str, Any]:
        """The training config, the QAT plan and the caller's stage options (recorded in the history)."""
        return {**self.cfg.to_dict(), **({"qat": self.qat.to_dict()} if self.qat else {}),
                **(self.stage[1] if self.stage else {})}

    def _write_output(self, final: dict[str, Any], tok_s: float) -> None:
        stage = {"stage": self.stage[0] if self.stage else "qat" if self.qat else "distill",
                 "config": {**self._config(), "teachers": [t.spec.to_dict() for t in self.teachers],
                            "data": self.corpus_source, "world_size": self.dist.world},
                 "metrics": {**final, "tokens_per_s": tok_s, "teachers_loaded": self.teachers_loaded,
                             **({"blockwise": self.blockwise} if self.blockwise else {})}}
        if self.qat is not None:
            self.ckpt.quant = convert_qat(self.inner.student)
            stage["config"]["tensor_types"] = _type_counts(self.ckpt.quant.types)
        save(self.ckpt, self.out, stage=stage)
        if self.log_path.is_file():
            (self.out / "train_log.jsonl").write_bytes(self.log_path.read_bytes())


def _resume_config(cfg: DistillConfig, qat: QATPlan | None, stage: tuple[str, dict[str, Any]] | None
                   ) -> dict[str, Any]:
    """What an interrupted run must match to be resumed (less the budget, which may grow)."""
    full = {**cfg.to_dict(), **({"qat": qat.to_dict()} if qat else {}), **(stage[1] if stage else {})}
    return {k: v for k, v in full.items() if k not in DistillConfig.RESUME_FREE}


def _type_counts(types: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return counts


def _sha(windows: torch.Tensor, weights: torch.Tensor | None = None) -> str:
    from compress.data import windows_sha256

    return windows_sha256(windows, weights)
