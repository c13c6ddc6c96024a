"""GPTQ into GGUF blocks: valid blocks of the target type, lower calibration-weighted error than
round-to-nearest on every layer, and QAT that starts exactly from the GPTQ blocks."""
from __future__ import annotations

import copy

import pytest
import torch

from compress.calib import collect
from compress.errors import SlimkitError
from compress.quant import formats, gptq
from compress.quant.calibrated import quantize_model
from compress.quant.plans import QATPlan
from compress.quant.qat import convert_qat, prepare_qat
from conftest import TRAIN_TEXT, tiny_gemma3, tiny_llama


def _stats(ckpt):
    ids = ckpt.tokenizer(TRAIN_TEXT)["input_ids"]
    windows = torch.tensor(ids[: 6 * 64]).reshape(6, 64)
    return collect(ckpt.model, windows, gram=True, progress=False)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request):
    ckpt = tiny_llama() if request.param == "llama" else tiny_gemma3()
    return ckpt, _stats(ckpt)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q8_0"])
@pytest.mark.parametrize("weighted_scales", [False, True])
def test_gptq_beats_rtn_on_every_layer(tiny, qtype, weighted_scales):
    ckpt, stats = tiny
    cfg = gptq.GPTQConfig(weighted_scales=weighted_scales)
    for name, m in ckpt.model.named_modules():
        if not isinstance(m, torch.nn.Linear) or name == "lm_head":
            continue
        w, h = m.weight.detach(), stats.hessian(name)
        blocks, w_hat = gptq.gptq_quantize(w, h, qtype, cfg)
        assert blocks.dtype == torch.uint8 and blocks.shape == (w.shape[0], w.shape[1] // 32 * formats.type_size(qtype))
        # a valid block of the type: it unpacks, and its values are what the GGUF reader dequantizes
        assert torch.equal(formats.dequantize(blocks, qtype, tuple(w.shape)), w_hat)
        rtn = formats.fake_quantize(w, qtype)
        assert gptq.weighted_error(w, w_hat, h) < gptq.weighted_error(w, rtn, h), (name, qtype)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_gptq_k_quants(qtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 512, generator=g) @ torch.randn(512, 512, generator=g) * 0.1  # correlated inputs
    h = x.T.double() @ x.double() / x.shape[0]
    w = torch.randn(64, 512, generator=g) * 0.05
    blocks, w_hat = gptq.gptq_quantize(w, h, qtype)
    assert torch.equal(formats.dequantize(blocks, qtype, tuple(w.shape)), w_hat)
    assert gptq.weighted_error(w, w_hat, h) < 0.9 * gptq.weighted_error(w, formats.fake_quantize(w, qtype), h)


def test_dead_columns_and_bad_shapes():
    w = torch.randn(8, 64)
    h = torch.eye(64, dtype=torch.float64)
    h[5, 5] = 0  # a column no token touched
    blocks, w_hat = gptq.gptq_quantize(w, h, "Q4_0")
    assert w_hat.shape == w.shape and torch.isfinite(w_hat).all()
    with pytest.raises(SlimkitError, match="whole 32-blocks"):
        gptq.gptq_quantize(torch.randn(4, 48), torch.eye(48), "Q4_0")
    with pytest.raises(SlimkitError, match="does not match"):
        gptq.gptq_quantize(w, torch.eye(32), "Q4_0")
    with pytest.raises(SlimkitError, match="damping"):
        gptq.GPTQConfig(damp=-1.0)


@pytest.mark.parametrize("learn_scales", [False, True])
def test_qat_step_zero_is_exactly_the_gptq_blocks(tiny, learn_scales, tmp_path):
    ckpt, stats = tiny
    plan = QATPlan("q4_0", learn_scales=learn_scales)
    model = copy.deepcopy(ckpt.model)
    types = {f"{n}.weight": plan.type_for(n, tuple(m.weight.shape)) for n, m in model.named_modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    quant = quantize_model(model, types, stats, "gptq+imatrix")
    dequantized = {k: v.clone() for k, v in model.state_dict().items()}
    quant.save(tmp_path)  # tied weights' blocks are separate tensors (safetensors refuses shared memory)
    prepare_qat(model, plan, init=quant)
    ids = torch.tensor([ckpt.tokenizer(TRAIN_TEXT[:200])["input_ids"]])
    with torch.no_grad():
        step0 = model(input_ids=ids).logits
        reference = copy.deepcopy(ckpt.model)
        reference.load_state_dict(dequantized)
        torch.testing.assert_close(step0, reference(input_ids=ids).logits, rtol=0, atol=0)
    back = convert_qat(model)
    for name, blocks in quant.blocks.items():
        assert torch.equal(back.blocks[name], blocks), name


def test_init_plans_refuse_what_they_cannot_keep():
    with pytest.raises(SlimkitError, match="needs calibration text"):
        QATPlan("q4_0", init="gptq")
    with pytest.raises(SlimkitError, match="K-quants"):
        QATPlan("q4_k", init="gptq", calib=("x.txt",))
    with pytest.raises(SlimkitError, match="unknown --init"):
        QATPlan("q4_0", init="awq", calib=("x.txt",))
    plan = QATPlan("q4_0", init="gptq", calib=("a.txt",), calib_tokens=1024)
    assert QATPlan.from_dict(plan.to_dict()) == plan


def test_qad_from_gptq_starts_from_the_gptq_blocks(tmp_path):
    """Through the trainer (what `slimkit qat --init gptq+imatrix` runs): with a vanishing learning
    rate the trained blocks are the calibrated blocks, so step 0 was exactly them."""
    from compress.calib import calibration_windows
    from compress.checkpoint import load, save
    from compress.distill.config import DistillConfig
    from compress.distill.teachers import TeacherSpec
    from compress.distill.trainer import distill
    from compress.quant.calibrated import calibrated_init

    save(tiny_llama(), tmp_path / "student")
    (tmp_path / "data.txt").write_text(TRAIN_TEXT * 2)
    plan = QATPlan("q4_0", init="gptq+imatrix", calib=(str(tmp_path / "data.txt"),), calib_tokens=512,
                   calib_seq_len=64)
    ckpt = load(tmp_path / "student")
    expected = calibrated_init(ckpt.model, ckpt.tokenizer, plan)
    assert calibration_windows(ckpt.model, ckpt.tokenizer, plan.calib, 512, 64)[0].shape == (8, 64)
    cfg = DistillConfig(tokens=2 * 4 * 32, seq_len=32, batch_size=4, lr=1e-12)
    res = distill(tmp_path / "student", [TeacherSpec(str(tmp_path / "student"))], tmp_path / "qad", cfg,
                  data=[tmp_path / "data.txt"], progress=False, qat=plan)
    trained = load(res.out).quant
    assert trained.plan["init"] == "gptq+imatrix"
    for name, blocks in expected.blocks.items():
        assert torch.equal(trained.blocks[name], blocks), name


def test_sequential_gptq_calibrates_on_the_quantized_blocks(tiny):
    """Block by block: each block's Gram matrices come from the already quantized blocks' outputs,
    so the result differs from the one-pass GPTQ, and it reproduces the model's output at least as
    well on the calibration windows."""
    from compress.quant.sequential import capture, sequential_quantize

    ckpt, stats = tiny
    ids = ckpt.tokenizer(TRAIN_TEXT)["input_ids"]
    windows = torch.tensor(ids[: 6 * 64]).reshape(6, 64)
    xs, calls = capture(ckpt.model, windows)
    assert len(xs) == 6 and len(calls) == ckpt.model.config.num_hidden_layers and all(len(c) == 6 for c in calls)
    types = {f"{n}.weight": "Q4_0" for n, m in ckpt.model.named_modules() if isinstance(m, torch.nn.Linear)}
    types["model.embed_tokens.weight"] = types["lm_head.weight"] = "Q8_0"  # tied
    seq, one = copy.deepcopy(ckpt.model), copy.deepcopy(ckpt.model)
    q_seq = sequential_quantize(seq, windows, types, "gptq+imatrix", progress=False)
    q_one = quantize_model(one, types, stats, "gptq+imatrix", gptq.GPTQConfig(sequential=False))
    assert set(q_seq.blocks) == set(q_one.blocks)
    assert any(not torch.equal(q_seq.blocks[k], q_one.blocks[k]) for k in q_seq.blocks if "layers.1" in k)
    with torch.no_grad():
        ref = ckpt.model(input_ids=windows).logits
        err_seq = (seq(input_ids=windows).logits - ref).pow(2).mean()
        err_one = (one(input_ids=windows).logits - ref).pow(2).mean()
    assert err_seq <= err_one * 1.05
