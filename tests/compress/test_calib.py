"""compress.calib: one pass, imatrix sums / counts / Gram matrices of every Linear's input."""
from __future__ import annotations

import pytest
import torch

from compress.calib import MIN_CALIB_TOKENS, calibration_windows, collect
from compress.errors import SlimkitError
from conftest import TRAIN_TEXT, tiny_llama


def _windows(ckpt, n=3, seq=32):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, ckpt.model.config.vocab_size, (n, seq), generator=g)


def _inputs_by_hand(model, windows):
    """The inputs of every Linear, recorded by plain hooks (the reference)."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, []).append(a[0].detach()))
             for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for w in windows:
            model(input_ids=w[None])
    for h in hooks:
        h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double() for n, xs in seen.items()}


def test_sums_counts_and_gram_match_the_inputs():
    ckpt = tiny_llama()
    windows = _windows(ckpt)
    stats = collect(ckpt.model, windows, gram=True, progress=False)
    ref = _inputs_by_hand(ckpt.model, windows)
    assert set(stats.sum_sq) == set(ref) and "lm_head" in ref
    for name, x in ref.items():
        assert stats.count[name] == x.shape[0] == windows.numel()
        torch.testing.assert_close(stats.sum_sq[name], (x * x).sum(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.gram[name], x.T @ x, rtol=1e-5, atol=1e-5)
        assert stats.sum_sq[name].dtype == torch.float64
        torch.testing.assert_close(stats.importance(name), ((x * x).sum(0) / x.shape[0]).float())
    assert stats.tokens == windows.numel()


def test_siblings_share_one_gram_and_distinct_inputs_do_not():
    ckpt = tiny_llama()
    stats = collect(ckpt.model, _windows(ckpt), gram=True, progress=False)
    att = "model.layers.0.self_attn"
    assert stats.gram[f"{att}.q_proj"] is stats.gram[f"{att}.k_proj"] is stats.gram[f"{att}.v_proj"]
    assert stats.gram[f"{att}.o_proj"] is not stats.gram[f"{att}.q_proj"]
    mlp = "model.layers.0.mlp"
    assert stats.gram[f"{mlp}.gate_proj"] is stats.gram[f"{mlp}.up_proj"]
    assert stats.gram[f"{mlp}.down_proj"].shape == (128, 128)


def test_gram_only_when_asked_and_weights_untouched():
    ckpt = tiny_llama()
    before = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    stats = collect(ckpt.model, _windows(ckpt), gram={"model.layers.1.mlp.down_proj"}, progress=False)
    assert set(stats.gram) == {"model.layers.1.mlp.down_proj"}
    assert all(torch.equal(before[k], v) for k, v in ckpt.model.state_dict().items())


def test_calibration_text_too_short_names_the_minimum(tmp_path):
    ckpt = tiny_llama()
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    with pytest.raises(SlimkitError, match=f"at least {MIN_CALIB_TOKENS}"):
        calibration_windows(ckpt.model, ckpt.tokenizer, [short], 4096, 512)
    with pytest.raises(SlimkitError, match="too few"):
        calibration_windows(ckpt.model, ckpt.tokenizer, [short], 10, 512)
    text = tmp_path / "text.txt"
    text.write_text(TRAIN_TEXT * 4)
    windows, source = calibration_windows(ckpt.model, ckpt.tokenizer, [text], 1024, 256)
    assert windows.shape == (4, 256) and "text.txt" in source
