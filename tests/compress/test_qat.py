"""Quantization-aware training: fake quant == the GGUF blocks, straight-through gradients, learned
scales that stay exact, QAD through the distillation trainer, and the exported file's llama.cpp
logits against the fake-quant torch model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.errors import SlimkitError
from compress.quant import formats
from compress.quant.plans import TYPES, QATPlan
from compress.quant.qat import FakeQuant, convert_qat, is_prepared, prepare_qat

LEGACY = [t.value for t in formats.BlockType]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _w(rows: int = 8, cols: int = 64, seed: int = 0) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05
    w[0, 3] = 0.9  # an outlier block
    w[1, :256] = 0.0  # an all-zero block (and K-quant super-block)
    return w


def test_plan_types_are_exactly_what_formats_packs():
    assert set(TYPES) == {"F32", "F16", *formats.PACKED_TYPES}


@pytest.mark.parametrize("qtype", LEGACY + ["F16", "Q4_K", "Q6_K"])
def test_fake_quant_forward_is_dequantize_of_quantize(qtype):
    w = _w(cols=512).requires_grad_(True)
    y = FakeQuant(qtype)(w)
    if qtype == "F16":
        assert torch.equal(y, w.detach().half().float())
    else:
        assert torch.equal(y, formats.dequantize(formats.quantize(w.detach(), qtype), qtype, tuple(w.shape)))
    (y * torch.arange(w.numel()).reshape(w.shape)).sum().backward()
    assert torch.equal(w.grad, torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))  # straight through


@pytest.mark.parametrize("qtype", LEGACY)
def test_learned_scales_start_at_the_reference_and_stay_exact(qtype):
    w = _w(seed=1)
    fq = FakeQuant(qtype, w, learn_scales=True)
    wp = w.clone().requires_grad_(True)
    y = fq(wp)
    assert torch.equal(y, formats.fake_quantize(w, qtype))  # step 0 is llama.cpp's reference quantization
    (y ** 2).sum().backward()
    assert wp.grad.abs().sum() > 0 and fq.scale.grad is not None and fq.scale.grad.abs().sum() > 0
    if fq.min is not None:
        assert fq.min.grad.abs().sum() > 0
    with torch.no_grad():  # a training step moves scales off fp16 values and off the reference
        fq.scale.mul_(1.0 + 0.3 * torch.rand(fq.scale.shape, generator=torch.Generator().manual_seed(2)))
        if fq.min is not None:
            fq.min.add_(0.001)
    y = fq(w)
    packed = fq.pack(w)
    assert packed.dtype == torch.uint8 and packed.shape == (w.shape[0], w.shape[1] // 32 * formats.type_size(qtype))
    assert torch.equal(formats.dequantize(packed, qtype, tuple(w.shape)), y)  # the file holds the forward pass
    assert not torch.equal(y, formats.fake_quantize(w, qtype))


def test_learned_scale_gradient_is_lsq():
    """Inside the range d gets (q - w/d); at the clamp, the code."""
    w = torch.tensor([[0.30, -0.10] + [0.0] * 30])
    fq = FakeQuant("Q8_0", w, learn_scales=True)
    d = fq.scale.item()
    d16 = float(torch.tensor(d).half())
    y = fq(w)
    y[0, 1].backward()
    q = round(-0.10 / d)
    # y = q(d) * fp16(d): dy/dd = q + d16 * dq/dd = q - (w/d) * (d16/d), fp16 rounding straight-through
    assert fq.scale.grad[0, 0].item() == pytest.approx(q - (-0.10 / d) * d16 / d, rel=1e-4)
    fq.scale.grad = None
    with torch.no_grad():
        fq.scale.mul_(0.5)  # 0.30 / d is now 254: clamped to code 127, which is all d's gradient
    fq(w)[0, 0].backward()
    assert fq.scale.grad[0, 0].item() == 127.0


def test_plan_rules_and_fallbacks():
    plan = QATPlan.parse_rules("q4_0", ["model.layers.0.*=q8_0"])
    assert plan.type_for("model.layers.0.mlp.down_proj", (64, 128)) == "Q8_0"
    assert plan.type_for("model.layers.1.mlp.down_proj", (64, 128)) == "Q4_0"
    assert plan.type_for("model.embed_tokens", (400, 64)) == "Q8_0"
    assert plan.type_for("model.layers.1.mlp.down_proj", (64, 48)) == "F16"  # not whole 32-blocks
    assert QATPlan("q4_k").type_for("model.layers.1.mlp.up_proj", (64, 576)) == "Q5_0"  # llama.cpp's fallback
    assert QATPlan.from_dict(plan.to_dict()) == plan
    for bad in (lambda: QATPlan("q3_0"), lambda: QATPlan.parse_rules("q4_0", ["x=Q9_9"]),
                lambda: QATPlan.parse_rules("q4_0", ["nonsense"]), lambda: QATPlan("q4_k", learn_scales=True)):
        with pytest.raises(SlimkitError):
            bad()


@pytest.mark.parametrize("learn", [False, True])
def test_prepare_and_convert_on_a_tied_model(learn):
    from conftest import tiny_llama

    ckpt = tiny_llama(seed=5)
    model = ckpt.model
    ids = torch.randint(0, len(ckpt.tokenizer), (1, 24), generator=torch.Generator().manual_seed(0))
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    types = prepare_qat(model, QATPlan("q4_0", learn_scales=learn))
    assert types["model.embed_tokens.weight"] == types["lm_head.weight"] == "Q8_0"
    assert types["model.layers.1.mlp.down_proj.weight"] == "Q4_0"
    assert model.lm_head.parametrizations.weight[0] is model.model.embed_tokens.parametrizations.weight[0]
    assert is_prepared(model)
    with pytest.raises(SlimkitError, match="already prepared"):
        prepare_qat(model, QATPlan())
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    quant = convert_qat(model)
    assert not is_prepared(model) and model.lm_head.weight is model.model.embed_tokens.weight
    for name, p in model.named_parameters():
        qtype = quant.types.get(name, "F32")
        if qtype in formats.PACKED_TYPES:
            assert torch.equal(p, formats.fake_quantize(expected[name], qtype)), name
            assert torch.equal(formats.dequantize(quant.blocks[name], qtype, tuple(p.shape)), p), name
        elif name in expected:
            assert torch.equal(p, expected[name]), name  # norms stay float
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)  # converted model == fake-quant model


def _qad(tmp_path: Path, student: Path, data: Path, plan: QATPlan, **kw):
    from compress.distill.config import DistillConfig
    from compress.distill.teachers import TeacherSpec
    from compress.distill.trainer import distill

    cfg = DistillConfig(tokens=6 * 4 * 32, seq_len=32, batch_size=4, lr=2e-3, save_every=2)
    return distill(student, [TeacherSpec(str(student))], tmp_path, cfg, data=[data], progress=False, qat=plan, **kw)


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from conftest import TRAIN_TEXT, tiny_llama

    from compress.checkpoint import save

    root = tmp_path_factory.mktemp("qat")
    save(tiny_llama(seed=0), root / "student")
    (root / "data.txt").write_text(TRAIN_TEXT * 2)
    return root / "student", root / "data.txt"


@pytest.mark.parametrize("learn", [False, True])
def test_qad_export_reproduces_the_trained_blocks_in_llama_cpp(tiny_student, tmp_path, learn):
    pytest.importorskip("llama_cpp")
    import gguf

    from compress.checkpoint import load
    from export.gguf.writer import export_gguf

    student, data = tiny_student
    res = _qad(tmp_path / "qad", student, data, QATPlan("q4_0", learn_scales=learn))
    history = json.loads((res.out / "slimkit.json").read_text())
    assert history["stages"][-1]["stage"] == "qat"
    assert history["stages"][-1]["config"]["tensor_types"] == {"Q8_0": 2, "Q4_0": 14}
    ckpt = load(res.out)
    assert ckpt.quant is not None
    before = load(student).model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    trained = ckpt.model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(trained, formats.fake_quantize(before, "Q4_0"))  # training moved the blocks
    out = tmp_path / "qad.gguf"
    r = export_gguf(str(res.out), out)  # no --type: the trained blocks
    assert r.trained and r.type == "Q4_0"
    v = r.validation
    # llama.cpp against the fake-quant torch model itself (weights_as_stored): only ggml's Q8_0
    # activation rounding separates them.
    assert v["passed"] and v["stored"]["max_abs_diff"] <= v["tolerance"] and v["stored"]["top1_agreement"] >= 0.9
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    down = tensors["blk.1.ffn_down.weight"]
    assert down.tensor_type.name == "Q4_0"
    import numpy as np

    np.testing.assert_array_equal(np.asarray(down.data).view(np.uint8).reshape(-1),
                                  ckpt.quant.blocks["model.layers.1.mlp.down_proj.weight"].numpy().reshape(-1))
    assert tensors["token_embd.weight"].tensor_type.name == "Q8_0"
    requant = export_gguf(str(res.out), tmp_path / "requant.gguf", "Q8_0", validate=False)
    assert not requant.trained  # an explicit --type requantizes from the weights


def test_qad_resume_after_interruption_gives_identical_blocks(tiny_student, tmp_path):
    student, data = tiny_student
    plan = QATPlan("q4_0", learn_scales=True)
    full = _qad(tmp_path / "full", student, data, plan)

    class Preempted(Exception):
        pass

    def stop(step, _metrics):
        if step == 3:
            raise Preempted
    with pytest.raises(Preempted):
        _qad(tmp_path / "cut", student, data, plan, callback=stop)
    assert list((tmp_path / "cut.state" / "checkpoints").glob("*/student_qat.safetensors"))
    with pytest.raises(SlimkitError, match="qat"):
        _qad(tmp_path / "cut", student, data, QATPlan("q5_0", learn_scales=True), resume=True)
    resumed = _qad(tmp_path / "cut", student, data, plan, resume=True)
    from compress.checkpoint import load

    a, b = load(full.out).quant, load(resumed.out).quant
    assert a.types == b.types and a.blocks.keys() == b.blocks.keys()
    assert all(torch.equal(a.blocks[k], b.blocks[k]) for k in a.blocks)


def test_changed_weights_are_not_exported_as_trained_blocks(tiny_student, tmp_path):
    from compress.checkpoint import load, save
    from export.gguf.writer import export_gguf

    student, data = tiny_student
    res = _qad(tmp_path / "qad", student, data, QATPlan("q4_0"))
    ckpt = load(res.out)
    with torch.no_grad():
        ckpt.model.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    save(ckpt, tmp_path / "edited")
    with pytest.raises(SlimkitError, match="no longer match their trained Q4_0 blocks"):
        export_gguf(str(tmp_path / "edited"), tmp_path / "x.gguf", validate=False)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".x.gguf*"))


def test_cli_qat_bad_input_is_one_line_exit_2(tiny_student, tmp_path):
    student, data = tiny_student
    cases = [
        ["--plan", "q4_0", "--type-rule", "lm_head"],
        ["--no-teacher"],  # no --data / --ce-weight
        ["--plan", "q4_k", "--learn-scales"],
    ]
    for extra in cases:
        proc = subprocess.run([sys.executable, "-m", "slimkit.cli", "qat", str(student), "-o", str(tmp_path / "o"),
                               "--tokens", "64", *extra], capture_output=True, text=True)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "o").exists()


def test_k_quant_plan_exports_its_blocks_to_llama_cpp(tmp_path):
    """q4_k on a llama whose widths are whole 256-blocks: Q4_K bulk, Q6_K embedding/output,
    written as trained and run by llama.cpp within the stated tolerance of the torch model."""
    pytest.importorskip("llama_cpp")
    import gguf
    from conftest import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.checkpoint import Checkpoint
    from export.gguf.writer import export_gguf

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    prepare_qat(model, QATPlan("q4_k"))
    quant = convert_qat(model)
    assert quant.types["model.layers.0.mlp.down_proj.weight"] == "Q4_K"
    assert quant.types["model.embed_tokens.weight"] == "Q6_K"
    ckpt = Checkpoint(model, tok, {"format": 1, "source": "tiny-k", "stages": []}, quant=quant)
    res = export_gguf(ckpt, tmp_path / "k.gguf")
    assert res.trained and res.type == "Q4_K_M"
    v = res.validation
    assert v["passed"] and v["stored"]["max_abs_diff"] <= v["tolerance"] and v["stored"]["top1_agreement"] >= 0.9
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "k.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == "Q4_K" and types["token_embd.weight"] == "Q6_K"
