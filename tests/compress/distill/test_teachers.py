"""Teachers: tokenizer check, NF4 quantization, and the offline logit cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from distill_fixtures import ROOT, one_thread, tiny_dirs  # noqa: F401

from compress.distill.logit_cache import LogitCache, open_cache
from compress.distill.losses import SparseLogits
from compress.distill.parallel import Dist
from compress.distill.teachers import TeacherSpec, check_same_tokenizer, load_teacher, make_specs
from compress.errors import SlimkitError


def _other_tokenizer():
    """A tokenizer trained on different text: other merges, other ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["zebra quantum lattice " * 50], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


def test_mismatched_tokenizers_name_what_differs():
    student = ROOT.tiny_tokenizer()
    check_same_tokenizer(student, ROOT.tiny_tokenizer(), "same")  # identical: no error
    other = _other_tokenizer()
    with pytest.raises(SlimkitError) as err:
        check_same_tokenizer(student, other, "other-teacher")
    msg = str(err.value)
    assert "teacher other-teacher and the student use different tokenizers" in msg
    assert f"vocabulary size {len(other)} (teacher) vs {len(student)} (student)" in msg
    assert "\n" not in msg
    renamed = ROOT.tiny_tokenizer()
    renamed.eos_token = "<|endoftext|>"
    with pytest.raises(SlimkitError, match=r"eos_token '<\|endoftext\|>' \(teacher\) vs '<\|im_end\|>' \(student\)"):
        check_same_tokenizer(student, renamed, "t")


def test_load_teacher_checks_the_tokenizer_and_freezes(tiny_dirs, tmp_path):
    from compress.checkpoint import Checkpoint, save

    student, teacher_dir, _ = tiny_dirs
    t = load_teacher(TeacherSpec(str(teacher_dir)), ROOT.tiny_tokenizer())
    assert not t.model.training and not any(p.requires_grad for p in t.model.parameters())
    other = ROOT.tiny_llama(2)
    save(Checkpoint(other.model, _other_tokenizer(), other.history), tmp_path / "other")
    with pytest.raises(SlimkitError, match="different tokenizers"):
        load_teacher(TeacherSpec(str(tmp_path / "other")), ROOT.tiny_tokenizer())


def test_specs_validate_their_options():
    with pytest.raises(SlimkitError, match="one weight per teacher"):
        make_specs(["a", "b"], [1.0])
    assert [s.weight for s in make_specs(["a", "b"])] == [0.5, 0.5]
    with pytest.raises(SlimkitError, match="--loss"):
        TeacherSpec("a", loss="l2")
    with pytest.raises(SlimkitError, match="beta"):
        TeacherSpec("a", loss="jsd", beta=0.0)


def test_nf4_teacher_runs_on_cpu_close_to_float():
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit

    from compress.distill.teachers import quantize_nf4

    ref = ROOT.tiny_llama(1).model
    q = quantize_nf4(ROOT.tiny_llama(1).model)
    assert isinstance(q.lm_head, torch.nn.Linear) and not isinstance(q.lm_head, Linear4bit)
    layer = q.model.layers[0].mlp.up_proj
    assert isinstance(layer, Linear4bit) and layer.weight.quant_state.quant_type == "nf4"
    w = dequantize_4bit(layer.weight.data, layer.weight.quant_state)  # what NF4 keeps of the weight
    w_ref = ref.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(w, w_ref) and float((w - w_ref.detach()).abs().mean()) < 0.15 * float(w_ref.detach().abs().mean())
    x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ w.T, atol=1e-4)
        ids = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(0))
        a, b = ref(input_ids=ids).logits.flatten(), q(input_ids=ids).logits.flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.9


class _World:
    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    def barrier(self) -> None:
        pass


def test_logit_cache_round_trip_reuse_and_validation(tmp_path):
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 50, (10, 6), generator=g)
    table = torch.randn(50, 50, generator=g) * 3

    calls = []

    def logits_fn(ids):
        calls.append(ids.shape[0])
        return table[ids]  # (B, L, V): a deterministic fake teacher

    cache = open_cache(tmp_path, "t", windows, "teacher-a", k=5, temperature=2.0, logits_fn=logits_fn, dist=Dist())
    assert sum(calls) == 10
    got = cache.get([7, 2])
    want = SparseLogits.from_dense(table[windows[[7, 2]]], 5, 2.0)
    assert torch.equal(got.indices, want.indices)
    assert torch.allclose(got.values, want.values, atol=1e-2)  # float16 storage
    assert torch.allclose(got.rest_lse, want.rest_lse)
    assert json.loads((tmp_path / "t" / "meta.json").read_text())["k"] == 5

    calls.clear()  # a second run reuses every chunk
    open_cache(tmp_path, "t", windows, "teacher-a", 5, 2.0, logits_fn, Dist())
    assert calls == []
    with pytest.raises(SlimkitError, match="data it was built from"):
        open_cache(tmp_path, "t", windows.flip(0), "teacher-a", 5, 2.0, logits_fn, Dist())
    with pytest.raises(SlimkitError, match="teacher is 'teacher-a'"):
        open_cache(tmp_path, "t", windows, "teacher-b", 5, 2.0, logits_fn, Dist())

    # A chunk that belongs to other token ids is caught when it is read.
    other = LogitCache(tmp_path / "u", windows.flip(0), teacher="a", k=5, temperature=2.0)
    other.write_meta()
    other.build(logits_fn)
    (tmp_path / "t" / "chunk-000000.npz").write_bytes((tmp_path / "u" / "chunk-000000.npz").read_bytes())
    fresh = LogitCache(tmp_path / "t", windows, teacher="teacher-a", k=5, temperature=2.0)
    with pytest.raises(SlimkitError, match="other token ids"):
        fresh.get([0])


def test_logit_cache_builds_disjoint_shards_per_rank(tmp_path):
    windows = torch.arange(20 * 4).view(20, 4) % 30
    table = torch.randn(30, 30, generator=torch.Generator().manual_seed(1))
    cache = LogitCache(tmp_path / "c", windows, teacher="t", k=3, temperature=1.0, chunk_windows=4)
    cache.write_meta()
    assert cache.n_chunks == 5
    assert cache.build(lambda ids: table[ids], rank=1, world=2) == 2  # chunks 1, 3
    assert sorted(p.name for p in cache.dir.glob("chunk-*")) == ["chunk-000001.npz", "chunk-000003.npz"]
    assert cache.missing_chunks(0, 2) == [0, 2, 4] and cache.missing_chunks(1, 2) == []
    cache.build(lambda ids: table[ids], rank=0, world=2)
    assert cache.missing_chunks() == []
    with np.load(cache.chunk_path(4)) as z:
        assert z["indices"].dtype == np.uint16 and z["values"].dtype == np.float16


def test_quantized_gguf_teacher_loads_dequantized(tiny_dirs, tmp_path, monkeypatch):
    """A Q8_0 GGUF teacher: dequantized by compress.checkpoint, same tokenizer as the student."""
    from export.gguf.writer import export_gguf

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    _, teacher_dir, _ = tiny_dirs
    export_gguf(str(teacher_dir), tmp_path / "teacher.gguf", "Q8_0", validate=False)
    student_tok = ROOT.tiny_tokenizer()
    t = load_teacher(TeacherSpec(str(tmp_path / "teacher.gguf")), student_tok)
    ref = load_teacher(TeacherSpec(str(teacher_dir)), student_tok)
    ids = torch.tensor([student_tok("Once upon a time there was a robot").input_ids])
    with torch.no_grad():
        a, b = t.model(input_ids=ids).logits, ref.model(input_ids=ids).logits
    assert not torch.equal(a, b)  # really the quantized weights
    assert float((a - b).abs().mean()) < 0.05 * float(b.abs().mean())  # Q8_0: about 1% error
    assert t.identity != ref.identity
