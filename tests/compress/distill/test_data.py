"""compress.data: text / .gz / jsonl / chat jsonl loading, packing, held-out split, data-free corpus."""
from __future__ import annotations

import gzip
import json

import pytest
import torch
from distill_fixtures import ROOT, one_thread  # noqa: F401

from compress import data
from compress.errors import SlimkitError


@pytest.fixture(scope="module")
def tok():
    return ROOT.tiny_tokenizer()


def test_pack_adds_eos_between_documents_and_drops_the_tail():
    w = data.pack([[1, 2, 3], [4, 5]], seq_len=3, eos_id=9)
    assert w.tolist() == [[1, 2, 3], [9, 4, 5]]  # stream 1 2 3 9 4 5 9: the last 9 is dropped
    w = data.pack([[1, 2, 3], [4, 5]], seq_len=3, eos_id=9, bos_id=7)
    assert w.tolist() == [[7, 1, 2], [7, 3, 9], [7, 4, 5]]
    with pytest.raises(SlimkitError, match="fewer than one window"):
        data.pack([[1]], seq_len=8, eos_id=None)


def test_text_gz_and_jsonl_give_the_same_tokens(tmp_path, tok):
    text = "The robot counted ships. " * 40
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": text}) + "\n")
    windows = [data.load_corpus([tmp_path / n], tok, 16, heldout_fraction=0).train for n in ("a.txt", "a.txt.gz", "a.jsonl")]
    assert windows[0].shape[1] == 16 and windows[0].shape[0] > 5
    assert torch.equal(windows[0], windows[1]) and torch.equal(windows[0], windows[2])
    ids = tok(text, add_special_tokens=False).input_ids
    assert windows[0].reshape(-1).tolist() == ids[:windows[0].numel()]


def test_chat_jsonl_is_rendered_with_the_chat_template(tmp_path, tok):
    messages = [{"role": "user", "content": "Hello robot"}, {"role": "assistant", "content": "Hello!"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    docs = data.read_documents(tmp_path / "chat.jsonl", tok)
    assert docs == ["<|im_start|>user\nHello robot<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"]


def test_jsonl_bad_input_names_the_line(tmp_path, tok):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(SlimkitError, match=r"bad.jsonl:2 is not valid JSON"):
        data.read_documents(tmp_path / "bad.jsonl", tok)
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(SlimkitError, match="neither a 'text' string nor a 'messages' list"):
        data.read_documents(tmp_path / "nofield.jsonl", tok)
    with pytest.raises(SlimkitError, match="no such text file"):
        data.read_documents(tmp_path / "missing.txt", tok)


def test_heldout_split_is_disjoint_and_seeded():
    w = torch.arange(40).view(20, 2)
    train, held = data.split_heldout(w, 0.1, seed=3)
    assert train.shape[0] == 18 and held.shape[0] == 2
    assert not set(train[:, 0].tolist()) & set(held[:, 0].tolist())
    assert torch.equal(held, data.split_heldout(w, 0.1, seed=3)[1])


def test_data_free_corpus_is_capped_seeded_and_has_a_heldout_slice(tok):
    model = ROOT.tiny_llama(1).model
    a = data.teacher_corpus(model, tok, max_tokens=200, seq_len=16, heldout_fraction=0.2, seed=5, batch_size=4)
    b = data.teacher_corpus(model, tok, max_tokens=200, seq_len=16, heldout_fraction=0.2, seed=5, batch_size=4)
    n = a.train.shape[0] + a.heldout.shape[0]
    assert 200 // 16 - 1 <= n <= (200 + 4 * 17) // 16  # the cap stops sampling within one batch
    assert a.heldout.shape[0] >= 1 and a.sha256 == b.sha256
    assert a.sha256 != data.teacher_corpus(model, tok, 200, 16, 0.2, seed=6, batch_size=4).sha256
