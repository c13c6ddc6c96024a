"""Least-squares recovery of pruned models and linear bridges over removed blocks (tiny models)."""
from __future__ import annotations

import copy

import pytest
import torch

from compress.errors import SlimkitError
from compress.prune import PruneConfig, prune
from compress.prune import bridge as bridges
from compress.prune.api import calibration_windows
from compress.prune.importance import score
from compress.prune.recover import RecoverConfig, recover
from compress.prune.shape import shape_of
from compress.prune.surgery import apply_shape
from conftest import TINY, prune_shape

pytest.importorskip("torch_pruning")
IDS = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))


def _cfg(calib, **kw):
    return PruneConfig(**{**dict(calib=calib, calib_tokens=1024, calib_ctx=64, align=8), **kw})


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _windows(calib, ckpt):
    return calibration_windows(_cfg(calib, target_params=1.0), ckpt.tokenizer)


@pytest.mark.parametrize("family", sorted(TINY))
def test_removed_channels_that_are_combinations_of_kept_ones_are_recovered_exactly(family, calib):
    """FFN channel F/2 + k is channel k at 1% strength (same gate row, up row * 0.01; its down_proj
    column * 100, so it matters): minitron removes the upper half, and re-fitting down_proj on the
    kept channels restores the dense model."""
    ckpt = TINY[family]()
    half = ckpt.model.config.intermediate_size // 2
    with torch.no_grad():
        for blk in ckpt.model.model.layers:
            blk.mlp.gate_proj.weight[half:] = blk.mlp.gate_proj.weight[:half]
            blk.mlp.up_proj.weight[half:] = 0.01 * blk.mlp.up_proj.weight[:half]
            blk.mlp.down_proj.weight[:, half:] *= 100
    dense = _logits(ckpt.model)
    pruned = prune(copy.deepcopy(ckpt), _cfg(calib, shape={"ffn": half}, recover="none"), progress=False)
    assert all(k == list(range(half)) for k in pruned.stage["kept"]["ffn"].values())  # the halves went
    gap = (_logits(pruned.checkpoint.model) - dense).abs().max()
    res = prune(ckpt, _cfg(calib, shape={"ffn": half}, recover="ls", recover_damp=0.0), progress=False)
    fixed = (_logits(res.checkpoint.model) - dense).abs().max()
    assert gap > 1e-2 and fixed < 1e-4, (float(gap), float(fixed))
    assert res.stage["recovery"]["linears"]["mlp.down_proj"]["applied"] == len(res.checkpoint.model.model.layers)


def _inputs_and_targets(dense, model, names_rows, windows):
    """Per (layer, Linear name): the Linear's input in `model` and the dense Linear's kept output rows."""
    got: dict = {}
    hooks = []
    for (i, j, name), rows in names_rows.items():
        mod = model.model.layers[j].get_submodule(name)
        ref = dense.model.layers[i].get_submodule(name)
        hooks.append(mod.register_forward_pre_hook(lambda m, a, k=(i, name): got.setdefault(("x",) + k, []).append(a[0])))
        hooks.append(ref.register_forward_hook(lambda m, a, o, k=(i, name), r=rows: got.setdefault(("y",) + k, []).append(
            o if r is None else o.index_select(-1, r))))
    for i in {k[0] for k in names_rows}:   # token weights: 1 / mean square of the dense block's output stream
        hooks.append(dense.model.layers[i].register_forward_hook(lambda m, a, o, i=i: got.setdefault(("w", i), []).append(
            1.0 / (o[0] if isinstance(o, tuple) else o).pow(2).mean(-1, keepdim=True))))
    with torch.no_grad():
        for w in windows:
            model(input_ids=w[None])
            dense(input_ids=w[None])
    for h in hooks:
        h.remove()
    return got


@pytest.mark.parametrize("family", sorted(TINY))
def test_recovery_never_raises_a_layers_reconstruction_error(family, calib):
    from compress.prune.recover import kept_rows, width_groups

    ckpt = TINY[family]()
    dense = copy.deepcopy(ckpt.model)
    windows = _windows(calib, ckpt)
    shape = prune_shape(family, "layers")
    res = prune(ckpt, _cfg(calib, shape=shape, recover="none"), progress=False)
    model, kept = res.checkpoint.model, res.stage["kept"]
    before = copy.deepcopy(model)
    report = recover(dense, model, kept, windows, RecoverConfig(damp=0.01), progress=False)
    hd = getattr(dense.config, "head_dim", None) or dense.config.hidden_size // dense.config.num_attention_heads
    names = {(i, j, n): kept_rows(kept, i, hd)[n] for j, i in enumerate(kept["layers"])
             for g in width_groups(kept) for n in g}
    assert len(report["fits"]) == len(names) == 7 * len(kept["layers"])
    got = _inputs_and_targets(dense, model, names, windows)
    for f in report["fits"]:
        i, name = f["layer"], f["name"]
        j = kept["layers"].index(i)
        x, y = torch.cat(got[("x", i, name)]).double(), torch.cat(got[("y", i, name)]).double()
        wt = torch.cat(got[("w", i)]).double().sqrt()
        x, y = x * wt, y * wt          # the weighted least-squares rows
        lin_old, lin_new = before.model.layers[j].get_submodule(name), model.model.layers[j].get_submodule(name)
        old, new = lin_old.weight.detach().double(), lin_new.weight.detach().double()
        b_old = lin_old.bias.detach().double() if lin_old.bias is not None else 0.0   # Qwen2's q/k/v
        b_new = lin_new.bias.detach().double() if lin_new.bias is not None else 0.0
        err_old = ((x @ old.T + wt * b_old - y) ** 2).sum()
        err_new = ((x @ new.T + wt * b_new - y) ** 2).sum()
        assert err_new <= err_old * (1 + 1e-6), (i, name)
        # the report's errors are these, measured independently
        assert f["rel_err_after"] == pytest.approx(float(err_new / (y ** 2).sum()), rel=1e-3, abs=1e-6)
        assert f["rel_err_before"] == pytest.approx(float(err_old / (y ** 2).sum()), rel=1e-3, abs=1e-6)
    assert sum(f["applied"] for f in report["fits"]) > len(report["fits"]) // 2
    assert report["rel_err_after"] < report["rel_err_before"]


@pytest.mark.parametrize("family", sorted(TINY))
def test_local_targets_are_the_dense_modules_on_the_pruned_input(family, calib):
    """target=local (the default where the residual width is kept): o_proj and down_proj are fitted
    to the dense attention / MLP run on the pruned block's own input; each fit lowers that error."""
    from compress.prune.recover import LOCAL_PARENTS

    ckpt = TINY[family]()
    dense = copy.deepcopy(ckpt.model)
    windows = _windows(calib, ckpt)
    shape = prune_shape(family, "layers", "hidden")
    res = prune(ckpt, _cfg(calib, shape=shape, recover="none"), progress=False)
    model, kept = res.checkpoint.model, res.stage["kept"]
    before = copy.deepcopy(model)
    report = recover(dense, model, kept, windows, RecoverConfig(damp=0.01, target="local"), progress=False)
    got: dict = {}
    hooks = []
    for j, i in enumerate(kept["layers"]):
        for name, parent in LOCAL_PARENTS.items():
            def pre(m, a, k, i=i, name=name, parent=parent):
                out = dense.model.layers[i].get_submodule(parent)(*a, **k)
                got.setdefault(("y", i, name), []).append(out[0] if isinstance(out, tuple) else out)
            hooks.append(before.model.layers[j].get_submodule(parent).register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(before.model.layers[j].get_submodule(name).register_forward_pre_hook(
                lambda m, a, k=(i, name): got.setdefault(("x",) + k, []).append(a[0])))
        hooks.append(dense.model.layers[i].register_forward_hook(lambda m, a, o, i=i: got.setdefault(("w", i), []).append(
            1.0 / (o[0] if isinstance(o, tuple) else o).pow(2).mean(-1, keepdim=True))))
    fits = {(f["layer"], f["name"]): f for f in report["fits"]}
    assert {n for _, n in fits} == set(LOCAL_PARENTS)
    # the first block sees the dense input: its local and dense targets agree, so only it can be
    # checked on the unrepaired model's inputs (later blocks' inputs change as earlier ones are fixed)
    i0 = kept["layers"][0]
    with torch.no_grad():
        for w in windows:
            before(input_ids=w[None], use_cache=False)
            dense(input_ids=w[None], use_cache=False)
    for h in hooks:
        h.remove()
    wt = torch.cat(got[("w", i0)]).double().sqrt()
    for name in ("self_attn.o_proj",):   # o_proj's input is the same before and after its own fit
        x, y = torch.cat(got[("x", i0, name)]).double() * wt, torch.cat(got[("y", i0, name)]).double() * wt
        old = before.model.layers[0].get_submodule(name).weight.detach().double()
        new = model.model.layers[0].get_submodule(name).weight.detach().double()
        err_old, err_new = ((x @ old.T - y) ** 2).sum(), ((x @ new.T - y) ** 2).sum()
        assert err_new < err_old
        assert fits[(i0, name)]["rel_err_after"] == pytest.approx(float(err_new / (y ** 2).sum()), rel=1e-3, abs=1e-6)
    assert all(f["rel_err_after"] <= f["rel_err_before"] for f in report["fits"])


def _identity_block(model, k):
    with torch.no_grad():
        blk = model.model.layers[k]
        blk.self_attn.o_proj.weight.zero_()
        blk.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("objective", ["ls", "cosine"])
def test_bridge_across_an_identity_block_is_the_identity(family, objective, calib):
    from compress.calib import capture

    ckpt = TINY[family]()
    _identity_block(ckpt.model, 1)
    dense = copy.deepcopy(ckpt.model)
    windows = _windows(calib, ckpt)
    xs, calls = capture(dense, windows)
    y, m, _ = bridges._terms(dense.model.layers[0], xs, calls[0])
    target = y + m                                    # block 1 does nothing: what left block 0
    t = bridges.fit_map(y, m, target, objective, damp=1e-6)
    torch.testing.assert_close(t, torch.eye(t.shape[0], dtype=t.dtype), atol=2e-3, rtol=0)
    n = len(dense.model.layers)
    res = prune(ckpt, _cfg(calib, shape={"layers": n - 1}, bridge=objective), progress=False)
    assert 1 not in res.stage["kept"]["layers"]
    torch.testing.assert_close(_logits(res.checkpoint.model), _logits(dense), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(TINY))
def test_bridge_lowers_the_error_against_the_dense_hidden_state(family, calib):
    from compress.prune.shape import Shape

    ckpt = TINY[family]()
    dense = copy.deepcopy(ckpt.model)
    windows = _windows(calib, ckpt)
    model = ckpt.model
    keep = [0] + list(range(2, len(dense.model.layers)))          # block 1 removed, bridged in block 0
    scores = score(model, "magnitude", None, progress=False)
    kept = apply_shape(model, Shape(**{**shape_of(model.config).as_dict(), "layers": len(keep)}), scores, layers=keep)
    plain = copy.deepcopy(model)
    report = recover(dense, model, kept, windows, RecoverConfig(), progress=False)
    (b,) = report["bridges"]
    assert b["removed"] == [1, 1] and b["block"] == 0 and b["applied"]
    assert b["rel_err_after"] < b["rel_err_before"]

    def stream(m, k):   # the residual stream after block k, measured independently
        out = []
        h = m.model.layers[k].register_forward_hook(lambda mod, a, o: out.append(o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            for w in windows:
                m(input_ids=w[None])
        h.remove()
        return torch.cat(out).double()

    ref = stream(dense, 1)
    err = {name: float(((stream(m, 0) - ref) ** 2).sum() / (ref ** 2).sum()) for name, m in
           (("bridged", model), ("plain", plain))}
    assert err["bridged"] < err["plain"]
    assert err["bridged"] == pytest.approx(b["rel_err_after"], rel=1e-3)


def test_spans_are_chosen_by_distance_and_never_start_at_block_0_when_tied():
    n = 6
    dist = torch.full((n + 1, 4), float("inf"), dtype=torch.float64)
    for s in range(n):
        for k in range(1, 4):
            if s + k <= n:
                dist[s, k] = 1.0 + k
    dist[0, 2] = 0.1           # cheapest overall, but starts at block 0
    dist[3, 2] = 0.5
    dist[1, 1], dist[4, 1] = 0.2, 0.2
    one = dict((name, (kept, d)) for name, kept, d in bridges.choose_spans(dist, n, 2, allow_first=False))
    assert one["1 span"][0] == [0, 1, 2, 5]            # blocks 3, 4 removed
    assert one["2 spans"][0] == [0, 2, 3, 5]           # blocks 1 and 4 removed, kept block between
    assert bridges.choose_spans(dist, n, 2, allow_first=True)[0][1] == [2, 3, 4, 5]


def test_search_offers_depth_only_candidates_to_width_methods():
    from compress.prune.search import candidates
    from compress.prune.shape import ArchInfo, count_params

    ckpt = TINY["llama"]()
    dense, arch = shape_of(ckpt.model.config), ArchInfo.of(ckpt.model.config)
    target = int(count_params(dense, arch) * 0.6)
    names = [c.name for c in candidates(dense, arch, target, depth_only=False, align=8)]
    assert "depth" in names and any("ffn" in n for n in names)


@pytest.mark.parametrize("family", sorted(TINY))
def test_recover_none_reproduces_pruning_without_recovery_bit_for_bit(family, calib):
    ckpt = TINY[family]()
    shape = prune_shape(family)
    windows = _windows(calib, ckpt)
    ref = copy.deepcopy(ckpt.model)
    scores = score(ref, "minitron", windows, progress=False)
    from compress.prune.shape import Shape

    apply_shape(ref, Shape(**shape), scores)      # the surgery alone, as pruning was before recovery
    res = prune(ckpt, _cfg(calib, shape=shape, recover="none"), progress=False)
    assert "recovery" not in res.stage
    a, b = ref.state_dict(), res.checkpoint.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recover_options_are_validated(calib):
    with pytest.raises(SlimkitError, match="--calib"):
        PruneConfig(target_params=0.5, method="magnitude", recover="ls")
    with pytest.raises(SlimkitError, match="--recover-tokens"):
        _cfg(calib, target_params=0.5, recover_tokens=4096)
    with pytest.raises(SlimkitError, match="--bridge"):
        _cfg(calib, target_params=0.5, bridge="l1")
    with pytest.raises(SlimkitError, match="--recover-damp"):
        _cfg(calib, target_params=0.5, recover_damp=-1)
    assert _cfg(calib, target_params=0.5).recovering
    assert not PruneConfig(target_params=0.5, method="magnitude").recovering


@pytest.mark.parametrize("family", sorted(TINY))
def test_recovered_and_bridged_models_export_to_validated_gguf(family, calib, tmp_path):
    pytest.importorskip("llama_cpp")
    from compress.checkpoint import save
    from export.gguf.writer import export_gguf

    shape = prune_shape(family)
    res = prune(TINY[family](), _cfg(calib, shape=shape), progress=False)
    rec = res.stage["recovery"]
    assert rec["bridges"] and any(k["applied"] for k in rec["linears"].values())
    src = save(res.checkpoint, tmp_path / "pruned", stage=res.stage)
    v = export_gguf(str(src), tmp_path / "pruned.gguf", "F32", validate=True).validation
    assert v["top1_agreement"] == 1.0 and v["max_abs_diff"] <= v["tolerance"]


def test_cli_recovery_flags_plan_table_and_history(tmp_path, calib, capsys):
    import json

    from compress.checkpoint import save
    from slimkit.cli import main

    src = save(TINY["llama"](), tmp_path / "src")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["prune", str(src), "-o", str(out), "--target-params", "0.5", "--method", "magnitude",
                 "--recover", "ls"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "slimkit" in line]
    assert len(err) == 1 and "--calib" in err[0] and not out.exists()
    assert main(["prune", str(src), "-o", str(out), "--target-params", "0.6", "--calib", calib, "--calib-tokens", "512",
                 "--calib-ctx", "64", "--align", "8", "--recover-tokens", "256", "--bridge", "cosine"]) == 0
    printed = capsys.readouterr().out
    assert "calib loss pruned" in printed and "recovered" in printed and "recovery s" in printed
    assert "least-squares recovery" in printed
    stage = json.loads((out / "slimkit.json").read_text())["stages"][-1]
    assert stage["config"]["recover"] is None and stage["recovery"]["tokens"] == 256
    assert "recovery_seconds" in stage["metrics"] and "calib_loss_pruned" in stage["metrics"]
    assert any(c["name"].startswith("depth") for c in stage["plan"]["candidates"])


def test_self_calibration_samples_seeded_windows_from_the_model_and_recovers(tmp_path, capsys):
    """--calib self: windows of the model's own samples (same seed, same windows), enough of them,
    and the CLI prunes with recovery on them and records the choice."""
    import json

    from compress.checkpoint import save
    from slimkit.cli import main

    ckpt = TINY["llama"]()
    cfg = _cfg("self", target_params=1.0, calib_tokens=512)
    w = calibration_windows(cfg, ckpt.tokenizer, ckpt.model)
    assert w.shape == (512 // 64, 64) and w.dtype == torch.long
    assert torch.equal(w, calibration_windows(cfg, ckpt.tokenizer, ckpt.model))
    other = calibration_windows(_cfg("self", target_params=1.0, calib_tokens=512, seed=1), ckpt.tokenizer, ckpt.model)
    assert not torch.equal(w, other)
    with pytest.raises(SlimkitError, match="model"):
        calibration_windows(cfg, ckpt.tokenizer)
    src = save(ckpt, tmp_path / "src")
    out = tmp_path / "out"
    assert main(["prune", str(src), "-o", str(out), "--target-params", "0.6", "--calib", "self", "--calib-tokens",
                 "512", "--calib-ctx", "64", "--align", "8"]) == 0
    assert "least-squares recovery" in capsys.readouterr().out
    stage = json.loads((out / "slimkit.json").read_text())["stages"][-1]
    assert stage["config"]["calib"] == "self" and stage["recovery"]["tokens"] == 512
