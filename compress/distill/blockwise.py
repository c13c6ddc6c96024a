"""Block-wise distillation of a pruned student: each student block learns to map the teacher's
hidden state at its input to the teacher's hidden state where the next kept block starts, one
block at a time, from cached teacher hidden states (the backward pass runs through one block
only). End-to-end KD then starts from blocks that already agree with the teacher locally.

The layer map is the pruning's: student block j is teacher block kept[j] of the prune stage in
the student's slimkit.json, so it stands for teacher blocks kept[j] .. kept[j+1] - 1: its input
is the teacher's hidden state entering kept[j] and its target the state entering kept[j+1] (the
last block's: the teacher's last hidden state before the final norm). Block 0 is fed the
embeddings whatever was cut before it, so it stands for teacher blocks 0 .. kept[1] - 1. When the residual width was pruned, the teacher's states are
sliced to the kept hidden channels.

Loss per block: sum over tokens |f_j(h) - y|^2 / sum |y|^2 (relative error; the residual stream
carries a few huge channels, so each token weighs by 1 / its target's mean square as the
pruning recovery does). AdamW, constant learning rate after a short warmup, batch of windows;
a block whose error did not fall keeps its weights, so the stage never raises a block's error.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from compress.calib import capture, decoder_layers, run_block
from compress.errors import SlimkitError


def kept_layers(history: dict[str, Any]) -> tuple[list[int], list[int] | None]:
    """(teacher block of each student block, kept hidden channels or None) from the student's
    last prune stage."""
    prunes = [s for s in history.get("stages", []) if s.get("stage") == "prune" and "kept" in s]
    if not prunes:
        raise SlimkitError("--blockwise-tokens needs a student pruned by slimkit from the teacher (its slimkit.json "
                           "names the kept blocks); this student has no prune stage")
    kept = prunes[-1]["kept"]
    return list(kept["layers"]), None if kept["hidden"] == "all" else list(kept["hidden"])


def _weights(y: torch.Tensor) -> torch.Tensor:
    return 1.0 / y.float().pow(2).mean(-1, keepdim=True).clamp_min(1e-12)


def block_error(block: nn.Module, xs: list[torch.Tensor], calls: list[tuple], ys: list[torch.Tensor]) -> float:
    """The weighted relative error of `block` on the cached pairs (what the stage minimises)."""
    num = den = 0.0
    with torch.no_grad():
        for x, c, y in zip(xs, calls, ys):
            out = run_block(block, [x], [c])[0]
            w = _weights(y)
            num += float(((out.float() - y.float()).pow(2) * w).sum())
            den += float((y.float().pow(2) * w).sum())
    return num / max(den, 1e-30)


def blockwise(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, history: dict[str, Any], *,
              lr: float = 1e-4, batch: int = 2, steps_per_block: int | None = None, progress: bool = True
              ) -> dict[str, Any]:
    """Train every block of `student` in place on `windows` (N, L); returns per-block errors before
    and after. Each block sees every window `steps_per_block * batch / N` times (default: once)."""
    start = time.perf_counter()
    layer_of, hidden = kept_layers(history)
    s_layers, t_layers = decoder_layers(student), decoder_layers(teacher)
    if len(layer_of) != len(s_layers) or max(layer_of) >= len(t_layers):
        raise SlimkitError(f"the student's slimkit.json keeps teacher blocks {layer_of}, but the student has "
                           f"{len(s_layers)} blocks and the teacher {len(t_layers)}: use the teacher it was pruned from")
    was = student.training, teacher.training
    student.eval()
    teacher.eval()
    with torch.no_grad():
        t_x, t_calls = capture(teacher, windows)
        _, s_calls = capture(student, windows)
    rows = None if hidden is None else torch.tensor(hidden, dtype=torch.long)

    def sliced(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return xs if rows is None else [x.index_select(-1, rows) for x in xs]

    n_steps = steps_per_block or max(1, math.ceil(len(windows) / batch))
    report: dict[str, Any] = {"blocks": [], "windows": int(len(windows)), "steps_per_block": n_steps, "lr": lr}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(s_layers) * n_steps, desc="block-wise distillation", unit="step", leave=False)
    # teacher states at the input of teacher block i, walked forward as the student blocks go
    states, at = t_x, 0
    for j, i in enumerate(layer_of):
        i = 0 if j == 0 else i   # block 0 is fed the embeddings: it also stands for blocks cut before it
        with torch.no_grad():
            for k in range(at, i):
                states = run_block(t_layers[k], states, t_calls[k])
            inputs = states
            nxt = layer_of[j + 1] if j + 1 < len(layer_of) else len(t_layers)
            targets = inputs
            for k in range(i, nxt):
                targets = run_block(t_layers[k], targets, t_calls[k])
        states, at = targets, nxt
        xs, ys = sliced(inputs), sliced(targets)
        block = s_layers[j]
        before = block_error(block, xs, s_calls[j], ys)
        saved = {k: v.detach().clone() for k, v in block.state_dict().items()}
        params = [p for p in block.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
        warm = max(1, n_steps // 10)
        block.train()
        for step in range(n_steps):
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / warm)
            idx = [(step * batch + b) % len(xs) for b in range(batch)]
            num = den = 0.0
            for b in idx:
                args, kwargs = s_calls[j][b]
                out = block(xs[b], *args, **kwargs)
                out = out[0] if isinstance(out, tuple) else out
                w = _weights(ys[b])
                num = num + ((out.float() - ys[b].float()).pow(2) * w).sum()
                den += float((ys[b].float().pow(2) * w).sum())
            (num / max(den, 1e-30)).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if bar is not None:
                bar.update(1)
        block.eval()
        after = block_error(block, xs, s_calls[j], ys)
        applied = after < before
        if not applied:   # never leave a block worse than it came
            block.load_state_dict(saved)
        report["blocks"].append({"block": j, "teacher_blocks": [i, nxt - 1], "rel_err_before": before,
                                 "rel_err_after": after if applied else before, "applied": applied})
    if bar is not None:
        bar.close()
    student.train(was[0])
    teacher.train(was[1])
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
