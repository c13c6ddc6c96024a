"""Checkpoint saves never lose data: the process is killed after each rename of the directory
replacement, and what is left loads as the old checkpoint or the new one."""
from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

from compress import atomic
from compress.checkpoint import load, save
from conftest import tiny_llama


def _save_and_die(step: str, ckpt, out) -> None:
    def die(name: str) -> None:
        if name == step:
            os._exit(17)   # a kill: no cleanup, no exception handlers
    atomic._after_step = die
    save(ckpt, out)
    os._exit(0)


def _first_weight(model) -> torch.Tensor:
    return next(iter(model.state_dict().values()))


@pytest.mark.parametrize("step", ["aside", "swap", "cleanup"])
def test_a_save_killed_after_any_rename_leaves_a_loadable_checkpoint(step, tmp_path):
    old, new = tiny_llama(0), tiny_llama(1)
    out = tmp_path / "ckpt"
    save(old, out)
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_save_and_die, args=(step, new, out))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 17
    got = _first_weight(load(out).model)
    expected = old if step == "aside" else new   # aside: the new one was never moved in
    assert torch.equal(got, _first_weight(expected.model))
    # the old copy moved aside is restored or removed by the load (a killed save's own temporary
    # directory may stay: it could be another process's save in progress, so nothing deletes it)
    assert not list(tmp_path.glob(".ckpt.old-*"))


def test_replace_dir_keeps_the_old_directory_until_the_new_one_is_in(tmp_path):
    out, tmp = tmp_path / "d", tmp_path / "t"
    out.mkdir()
    (out / "a").write_text("old")
    tmp.mkdir()
    (tmp / "a").write_text("new")
    seen = []
    atomic_after = atomic._after_step
    try:
        atomic._after_step = lambda s: seen.append((s, (out / "a").read_text() if out.exists() else None))
        atomic.replace_dir(tmp, out)
    finally:
        atomic._after_step = atomic_after
    assert seen == [("aside", None), ("swap", "new"), ("cleanup", "new")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
