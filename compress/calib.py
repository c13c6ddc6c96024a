"""Calibration statistics in one streaming pass: what quantization and pruning recovery need.

`collect(model, windows)` runs the model over calibration windows once and records, for the input
of every `nn.Linear` (the output head included):
  sum_sq[name]  per input channel, the sum over tokens of x_j^2 (float64): llama.cpp's imatrix
                `in_sum2` (tools/imatrix/imatrix.cpp, IMatrixCollector::collect_imatrix)
  count[name]   the number of tokens summed (the imatrix `counts`)
  gram[name]    with `gram=True` (or a set of names), the full X^T X (float64, in x in): the Hessian
                GPTQ uses (H = 2 X^T X) and the normal equations of least-squares refits
Each window's products are computed in float32 (one matmul per window, exact enough for sums of
at most a few thousand terms) and accumulated across windows in float64. Linears that read the
same tensor (q/k/v, gate/up) share one Gram matrix: memory is one in x in matrix per distinct
input, about 0.6 GB for a 135M model. A progress bar shows tokens/s.

`Collector(..., targets=...)` adds the cross terms X^T Y of a least-squares fit of a Linear's output
to another model's (pruning recovery), optionally token-weighted. `capture` and `run_block` run a
decoder block by block on recorded inputs and arguments (sequential GPTQ, pruning recovery).

`calibration_windows` turns text files into the windows, or, with no files, samples them from
the model itself (compress.data.teacher_corpus), and refuses a text too short to calibrate on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from compress.errors import SlimkitError

MIN_CALIB_TOKENS = 512  # below one 512-token window an imatrix is noise (llama-imatrix needs 1 chunk)


@dataclass
class CalibStats:
    """Per-Linear input statistics, keyed by module name (HF names, e.g. model.layers.0.mlp.down_proj)."""

    sum_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # (in,) float64
    count: dict[str, int] = field(default_factory=dict)
    gram: dict[str, torch.Tensor] = field(default_factory=dict)  # (in, in) float64, shared between siblings
    # with gram: sum of x (in,) float64, shared like gram (a bias column of least squares); with
    # token weights w, sum of w x, and weight_sum the sum of w (the bias column's own diagonal)
    sum_x: dict[str, torch.Tensor] = field(default_factory=dict)
    weight_sum: dict[str, float] = field(default_factory=dict)
    # with `targets` (least squares against another model's outputs Y, e.g. pruning recovery):
    cross: dict[str, torch.Tensor] = field(default_factory=dict)  # X^T Y (in, out) float64
    sum_y: dict[str, torch.Tensor] = field(default_factory=dict)  # sum of (w) y (out,) float64
    sq_y: dict[str, float] = field(default_factory=dict)  # sum of |y|^2 (the error of predicting 0)
    tokens: int = 0
    source: str = ""

    def importance(self, name: str) -> torch.Tensor:
        """The imatrix values llama.cpp's quantizer receives: mean of x_j^2 as llama-quantize computes
        it from a file, float32 sum / float32 count (tools/quantize/quantize.cpp, load_imatrix)."""
        if self.count.get(name, 0) <= 0:
            return torch.ones_like(self.sum_sq[name], dtype=torch.float32)
        sums = self.sum_sq[name].to(torch.float32)
        return torch.div(sums, torch.full_like(sums, float(self.count[name])))  # IEEE division, not x * (1/n)

    def hessian(self, name: str) -> torch.Tensor:
        """X^T X / tokens (float64): the mean Gram matrix (GPTQ's H up to a factor 2)."""
        if name not in self.gram:
            raise SlimkitError(f"no Gram matrix was collected for {name}; collect with gram=True")
        return self.gram[name] / max(1, self.count[name])


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


class Collector:
    """Forward pre-hooks that accumulate the statistics of each Linear's input.

    `targets` ({name: callable returning this window's target Y for that Linear, (..., out)}) adds
    the cross terms of a least-squares fit of the Linear's output to Y (implies its Gram matrix).
    `weights` (callable returning this window's per-token weights, (B, T)) weights every token's row
    (weighted least squares: rows scaled by sqrt(weight))."""

    def __init__(self, modules: dict[str, nn.Linear], gram: bool | set[str],
                 targets: dict[str, Callable[[], torch.Tensor]] | None = None,
                 weights: Callable[[], torch.Tensor] | None = None) -> None:
        self.stats = CalibStats()
        self.want_gram = gram
        self.targets = targets or {}
        self.weights = weights
        # id(input) -> (input kept alive, first reader, its float32 rows)
        self.seen: dict[int, tuple[torch.Tensor, str, torch.Tensor]] = {}
        self._sqrt_w: torch.Tensor | None = None   # this window's sqrt token weights, (tokens, 1)
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

    def _wants_gram(self, name: str) -> bool:
        if name in self.targets:
            return True
        return self.want_gram if isinstance(self.want_gram, bool) else name in self.want_gram

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._add(name, args[0])
        return hook

    def _add(self, name: str, x: torch.Tensor) -> None:
        st = self.stats
        sibling = self.seen.get(id(x))
        if sibling is not None and sibling[0] is x:  # q/k/v or gate/up: the same tensor as a sibling
            first, flat = sibling[1], sibling[2]
            st.sum_sq[name], st.count[name] = st.sum_sq[first], st.count[first]
            if first in st.gram:
                st.gram[name], st.sum_x[name] = st.gram[first], st.sum_x[first]
                st.weight_sum[name] = st.weight_sum[first]
            elif self._wants_gram(name):
                self._add_gram(name, flat)
            self._add_cross(name, flat)
            return
        flat = self._rows(x)  # (tokens, in)
        self.seen[id(x)] = (x, name, flat)  # kept alive until the window ends, so ids are not reused
        sq = (flat * flat).sum(dim=0, dtype=torch.float64)
        if name in st.sum_sq:
            st.sum_sq[name] += sq
            st.count[name] += flat.shape[0]
        else:
            st.sum_sq[name], st.count[name] = sq, flat.shape[0]
        if self._wants_gram(name):
            self._add_gram(name, flat)
        self._add_cross(name, flat)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(torch.float32)
        self._sqrt_w = None
        if self.weights is not None:
            sw = self.weights().to(torch.float32).sqrt()
            x = x * sw.unsqueeze(-1)
            self._sqrt_w = sw.reshape(-1, 1)
        return x.reshape(-1, x.shape[-1])

    def _weighted_sum(self, rows: torch.Tensor) -> torch.Tensor:
        """sum_t w_t v_t of rows already scaled by sqrt(w_t) (plain sums without weights)."""
        if self._sqrt_w is None:
            return rows.sum(dim=0, dtype=torch.float64)
        return (rows * self._sqrt_w).sum(dim=0, dtype=torch.float64)

    def _add_gram(self, name: str, flat: torch.Tensor) -> None:
        st = self.stats
        g = (flat.T @ flat).to(torch.float64)  # (in, in)
        s = self._weighted_sum(flat)
        w = float(flat.shape[0]) if self._sqrt_w is None else float(self._sqrt_w.double().pow(2).sum())
        if name in st.gram:
            st.gram[name] += g
            st.sum_x[name] += s
            st.weight_sum[name] += w
        else:
            st.gram[name], st.sum_x[name], st.weight_sum[name] = g, s, w

    def _add_cross(self, name: str, flat: torch.Tensor) -> None:
        if name not in self.targets:
            return
        st = self.stats
        y = self._rows(self.targets[name]())  # (tokens, out)
        if y.shape[0] != flat.shape[0]:
            raise SlimkitError(f"least-squares target for {name} has {y.shape[0]} rows, its input {flat.shape[0]}")
        xy, sy, yy = (flat.T @ y).to(torch.float64), self._weighted_sum(y), float((y.double() ** 2).sum())
        if name in st.cross:
            st.cross[name] += xy
            st.sum_y[name] += sy
            st.sq_y[name] += yy
        else:
            st.cross[name], st.sum_y[name], st.sq_y[name] = xy, sy, yy

    def end_window(self) -> None:
        self.seen.clear()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def collect(model: nn.Module, windows: torch.Tensor, *, gram: bool | set[str] = False,
            modules: Iterable[str] | None = None, batch_size: int = 1, progress: bool = True,
            source: str = "") -> CalibStats:
    """One pass of the model over `windows` (N, seq_len) token ids; statistics of every Linear's
    input (or only `modules`). The model runs in eval mode; its weights are not changed."""
    found = linear_modules(model)
    if modules is not None:
        wanted = list(modules)
        missing = [n for n in wanted if n not in found]
        if missing:
            raise SlimkitError(f"the model has no Linear named {missing[0]}")
        found = {n: found[n] for n in wanted}
    if windows.numel() == 0:
        raise SlimkitError("no calibration windows: give a longer --calib text")
    collector = Collector(found, gram)
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(windows.numel()), desc="calibration", unit="tok", leave=False)
    try:
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size]
            model(input_ids=batch, use_cache=False)
            collector.end_window()
            collector.stats.tokens += int(batch.numel())
            if bar is not None:
                bar.update(int(batch.numel()))
    finally:
        collector.close()
        if bar is not None:
            bar.close()
        model.train(was_training)
    collector.stats.source = source
    return collector.stats


# ------------------------------------------------------------------ block by block (sequential GPTQ, pruning recovery)
class _Stop(Exception):
    """Raised by the capture hook at the last block it needs: nothing after it is computed."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise SlimkitError(f"block-by-block calibration needs a decoder with model.layers; "
                           f"{type(model).__name__} has none")
    return layers


@torch.no_grad()
def capture(model: nn.Module, windows: torch.Tensor, *, first_only: bool = False
            ) -> tuple[list[torch.Tensor], list[list[tuple]]]:
    """(inputs of block 0 per window, (args, kwargs) of every block per window: attention masks and
    rotary embeddings, per block, so gemma3's sliding and global layers keep their own). The
    forward stops at the last block's input (with `first_only`, at block 0's: only its inputs and
    arguments are recorded)."""
    layers = decoder_layers(model)
    inputs: list[torch.Tensor] = []
    calls: list[list[tuple]] = [[] for _ in layers]

    def hook_for(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if i == 0:
                inputs.append(args[0].detach())
            calls[i].append((args[1:], {k: v for k, v in kwargs.items() if k != "cache"}))
            if first_only or i == len(layers) - 1:
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for w in windows:
            try:
                model(input_ids=w[None], use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return inputs, calls


def run_block(layer: nn.Module, xs: list[torch.Tensor], calls: list[tuple], after: Callable[[], None] | None = None
              ) -> list[torch.Tensor]:
    """The block's outputs for inputs `xs` (one per window) with the arguments `capture` recorded;
    `after` runs after each window (e.g. Collector.end_window)."""
    out = []
    for x, (args, kwargs) in zip(xs, calls):
        y = layer(x, *args, **kwargs)
        out.append((y[0] if isinstance(y, tuple) else y).detach())
        if after is not None:
            after()
    return out


def _file_windows(path: str | Path, tokenizer: Any, seq_len: int, seed: int) -> torch.Tensor:
    from compress import data

    try:
        return data.load_corpus([path], tokenizer, seq_len, heldout_fraction=0.0, seed=seed).train
    except SlimkitError as exc:
        if "fewer than one window" not in str(exc):
            raise
        return torch.zeros(0, seq_len, dtype=torch.long)  # too short alone: the total is checked below


def calibration_windows(model: nn.Module, tokenizer: Any, paths: Sequence[str | Path] | None, tokens: int,
                        seq_len: int = 512, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(N, seq_len) calibration windows holding at most `tokens` tokens, and a description.

    Files: each packed like training text (compress.data), windows taken from the files in turn
    (deterministic). 
    No files: sampled from the model (data-free calibration, seeded)."""
    if tokens < MIN_CALIB_TOKENS:
        raise SlimkitError(f"--calib-tokens {tokens} is too few; give at least {MIN_CALIB_TOKENS}")
    if paths:
        # each file packed on its own, windows taken from the files in turn: every file contributes
        per_file = [_file_windows(p, tokenizer, seq_len, seed) for p in paths]
        order = [w[i] for i in range(max(len(w) for w in per_file)) for w in per_file if i < len(w)]
        windows = torch.stack(order) if order else torch.zeros(0, seq_len, dtype=torch.long)
        available = int(windows.numel())
        if available < MIN_CALIB_TOKENS:
            raise SlimkitError(f"the calibration text holds {available} tokens in whole {seq_len}-token windows; "
                               f"give at least {MIN_CALIB_TOKENS} tokens (a longer --calib file)")
        source = ", ".join(str(p) for p in paths)
    else:
        windows, source = model_windows(model, tokenizer, tokens, seq_len, seed)
    n = max(1, tokens // seq_len)
    return windows[:n], source


def model_windows(model: nn.Module, tokenizer: Any, tokens: int, seq_len: int, seed: int = 0,
                  batch_size: int = 4) -> tuple[torch.Tensor, str]:
    """Calibration windows sampled from the model itself (data-free calibration, seeded; T=1,
    `batch_size` sequences at a time), and their description."""
    from compress import data

    corpus = data.teacher_corpus(model, tokenizer, tokens, seq_len, heldout_fraction=0.0, seed=seed,
                                 batch_size=batch_size)
    return corpus.train, corpus.source
