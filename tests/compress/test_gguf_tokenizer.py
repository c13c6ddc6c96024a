"""compress.gguf_tokenizer: the rebuilt HF tokenizer must give llama.cpp's ids, token for token.

Unit tests use tiny vocabularies built in-process. Tests marked `real` compare with llama.cpp's own
tokenizer of the two zoo GGUFs on >100k characters of real text from ../shared/data/text.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from compress.errors import SlimkitError  # noqa: E402
from compress.gguf_tokenizer import (  # noqa: E402
    PRE_TOKENIZERS, GGUFVocab, effective_token_types, tokenizer_from_vocab, vocab_from_gguf, vocab_from_tokenizer,
)

TT = gguf.TokenType
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TEXT_SOURCES = ("tinystories_valid_head", "tiny_shakespeare", "wikitext2_v1_tokenized_valid", "tinystories_train_head")
CHARS_PER_SOURCE = 60_000  # sequential text from each of the first three sources
CHUNK_CHARS = 400  # llama.cpp is called per chunk so a mismatch points at a few lines
MIN_CORPUS_CHARS = 100_000
ZOO = ("smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct")
# What the zoo GGUFs declare (llama.cpp's view): bos, eos, add_bos.
DECLARED = {"smollm2-135m-instruct": ("<|im_start|>", "<|im_end|>", False), "gemma3-270m": ("<bos>", "<eos>", True),
            "qwen2.5-coder-0.5b-instruct": ("<|endoftext|>", "<|im_end|>", False)}
EDGE_TEXTS = (
    "", " ", "\n", "  two leading", "trailing  ", "a\t\tb\n\n\n   c", "3.14159 1,000,000 2024-01-01 x2y3",
    "I'VE we'll 'RE don't", "caf\u00e9 na\u00efve \u00bd \u2160 \u4f60\u597d\u4e16\u754c \U0001f680\U0001f999",
    "\u00a0nbsp\u2009thin\u3000ideographic", "<b>bold</b> <table> [multimodal]", "\r\n windows \r\n",
)


def real_text_chunks() -> list[str]:
    """>100k characters: sequential chunks of each source plus every line with non-ASCII text."""
    if not (DATA / "text").is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    chunks: list[str] = []
    for i, name in enumerate(TEXT_SOURCES):
        lines = gzip.open(DATA / "text" / f"{name}.txt.gz", "rt", encoding="utf-8").read().splitlines(keepends=True)
        budget, cur = (CHARS_PER_SOURCE if i < 3 else 0), ""
        for line in lines:
            if budget > 0:
                cur += line
                if len(cur) >= CHUNK_CHARS:
                    chunks.append(cur)
                    budget, cur = budget - len(cur), ""
            elif any(ord(c) > 127 for c in line) or "  " in line:
                chunks.append(line)
    assert sum(map(len, chunks)) >= MIN_CORPUS_CHARS
    return chunks


def first_mismatch(texts, want, got, pieces) -> str | None:
    for i, (text, w, g) in enumerate(zip(texts, want, got)):
        if w != g:
            k = next((j for j, (a, b) in enumerate(zip(w, g)) if a != b), min(len(w), len(g)))
            return (f"chunk {i} {text[:200]!r}: first difference at token {k}: "
                    f"llama.cpp {pieces(w[max(0, k - 2):k + 4])} vs ours {pieces(g[max(0, k - 2):k + 4])}")
    return None


# ------------------------------------------------------------------------------ tiny, no zoo needed


def byte_level_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def tiny_bpe(pre: str = "smollm") -> GGUFVocab:
    control = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "l l", "e ll", "h ell", "1 2"]
    made = [m.replace(" ", "") for m in merges]
    tokens = control + byte_level_alphabet() + made
    types = [int(TT.CONTROL)] * len(control) + [int(TT.NORMAL)] * (len(tokens) - len(control))
    return GGUFVocab(model="gpt2", pre=pre, tokens=tuple(tokens), token_types=tuple(types), merges=tuple(merges),
                     special_ids={"bos": 1, "eos": 2, "unk": 0, "pad": 2}, chat_template="{{ messages }}")


def tiny_spm(scores: dict[str, float], add_space_prefix: bool = False) -> GGUFVocab:
    control, pieces = ["<unk>", "<s>", "</s>"], ["\u2581", "a", "b", "c", *scores]
    tokens = control + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [int(TT.CONTROL)] * 3 + [int(TT.BYTE)] * 256 + [int(TT.NORMAL)] * len(pieces)
    all_scores = [0.0] * (3 + 256) + [-100.0] * 4 + list(scores.values())
    return GGUFVocab(model="llama", pre="default", tokens=tuple(tokens), token_types=tuple(types),
                     scores=tuple(all_scores), special_ids={"bos": 1, "eos": 2, "unk": 0}, add_bos=True,
                     add_space_prefix=add_space_prefix)


def test_json_round_trip_is_atomic_and_keeps_odd_bytes(tmp_path: Path) -> None:
    odd = b"\xff\xfe".decode("utf-8", "surrogateescape")  # not UTF-8: GGUF strings are bytes
    v = dataclasses.replace(tiny_bpe(), tokens=tiny_bpe().tokens[:-1] + (odd,))
    path = tmp_path / "gguf_vocab.json"
    v.to_json(path)
    assert GGUFVocab.from_json(path) == v
    assert [p.name for p in tmp_path.iterdir()] == ["gguf_vocab.json"]  # no temp file left behind
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SlimkitError, match="re-create"):
        GGUFVocab.from_json(path)


@pytest.mark.parametrize("change, message", [
    ({"token_types": (1,)}, "token types"),
    ({"special_ids": {"bos": 10**6}}, "outside the vocabulary"),
    ({"merges": None}, "needs merges"),
    ({"model": "bert"}, "not supported"),
    ({"tokens": ("a",) * 262, "token_types": (1,) * 262}, "duplicate"),
])
def test_invalid_vocabularies_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(SlimkitError, match=message):
        dataclasses.replace(tiny_bpe(), **change)


def test_unknown_pre_tokenizer_names_the_value() -> None:
    with pytest.raises(SlimkitError, match="'made-up'"):
        tokenizer_from_vocab(dataclasses.replace(tiny_bpe(), pre="made-up"))


@pytest.mark.parametrize("pre", ["smollm", "gpt-2", "llama-bpe", "qwen2", "default", "dbrx"])
def test_bpe_vocab_survives_hf_round_trip(pre: str) -> None:
    v = tiny_bpe(pre)
    tok = tokenizer_from_vocab(v)
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>" and tok.chat_template == v.chat_template
    assert tok.convert_ids_to_tokens(tok.encode(" the hello 12", add_special_tokens=False))[:2] == ["Ġthe", "Ġ"]
    assert vocab_from_tokenizer(tok) == v


def test_native_hf_pre_tokenizer_layouts_are_recognised() -> None:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers as pt
    from transformers import PreTrainedTokenizerFast

    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    bytelevel = pt.ByteLevel(add_prefix_space=False, use_regex=False)
    layouts = {  # the layouts these models ship in tokenizer.json
        "smollm": pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)]),
        "gpt-2": pt.ByteLevel(add_prefix_space=False),
        "llama-bpe": pt.Sequence([pt.Split(Regex(llama3), "isolated"), bytelevel]),
        "qwen2": pt.Sequence([pt.Split(Regex(llama3.replace(r"\p{N}{1,3}", r"\p{N}")), "isolated"), bytelevel]),
    }
    v = tiny_bpe()
    for pre, layout in [*layouts.items(), ("reject", pt.ByteLevel(add_prefix_space=True))]:
        backend = tokenizer_from_vocab(v).backend_tokenizer
        backend.pre_tokenizer = layout
        if pre == "llama-bpe":
            backend.model.ignore_merges = True
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>")
        if pre == "reject":
            with pytest.raises(SlimkitError, match="pre-tokenizer"):
                vocab_from_tokenizer(tok)
        else:
            assert vocab_from_tokenizer(tok).pre == pre
    wordpiece = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]")))
    with pytest.raises(SlimkitError, match="WordPiece"):
        vocab_from_tokenizer(wordpiece)


def test_spm_merges_follow_piece_scores_like_llama_cpp() -> None:
    # llm_tokenizer_spm_session merges the best-scored adjacent pair first: "bc" beats "ab" here.
    bc_first = tokenizer_from_vocab(tiny_spm({"ab": -2.0, "bc": -1.0}))
    assert bc_first.convert_ids_to_tokens(bc_first.encode("abc", add_special_tokens=False)) == ["a", "bc"]
    ab_first = tokenizer_from_vocab(tiny_spm({"ab": -1.0, "bc": -2.0}))
    assert ab_first.convert_ids_to_tokens(ab_first.encode("abc", add_special_tokens=False)) == ["ab", "c"]
    # byte fallback for pieces not in the vocabulary, BOS from add_bos, U+2581 for spaces
    assert ab_first.convert_ids_to_tokens(ab_first.encode("\u00e9 a")) == ["<s>", "<0xC3>", "<0xA9>", "\u2581", "a"]
    assert ab_first.decode(ab_first.encode("\u00e9 a abc", add_special_tokens=False)) == "\u00e9 a abc"
    prefixed = tokenizer_from_vocab(tiny_spm({"ab": -1.0}, add_space_prefix=True))
    assert prefixed.convert_ids_to_tokens(prefixed.encode("ab", add_special_tokens=False)) == ["\u2581", "ab"]
    assert prefixed.decode(prefixed.encode("ab c", add_special_tokens=False)) == "ab c"


def test_spm_vocab_survives_hf_round_trip() -> None:
    v = tiny_spm({"ab": -1.0, "bc": -2.0, "abc": -3.0}, add_space_prefix=True)
    back = vocab_from_tokenizer(tokenizer_from_vocab(v))
    assert (back.model, back.tokens, back.token_types, back.special_ids) == (v.model, v.tokens, v.token_types,
                                                                            v.special_ids)
    assert (back.add_bos, back.add_eos, back.add_space_prefix) == (True, False, True)
    text = "abc cab bca aabbcc"
    assert tokenizer_from_vocab(back).encode(text) == tokenizer_from_vocab(v).encode(text)


def test_llama_cpp_text_fixups_make_eog_texts_control() -> None:
    v = tiny_bpe()
    v = dataclasses.replace(v, tokens=v.tokens[:-1] + ("<|eot_id|>",), token_types=v.token_types[:-1] + (4,))
    assert effective_token_types(v)[-1] == TT.CONTROL  # llama_vocab::impl::load forces EOG texts to CONTROL


# ----------------------------------------------------------------------------- real zoo GGUF models


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return real_text_chunks()


@pytest.fixture(scope="module", params=ZOO)
def zoo_model(request):
    from conftest import zoo_path

    llama_cpp = pytest.importorskip("llama_cpp")
    path = zoo_path(request.param)
    vocab = vocab_from_gguf(path)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return request.param, vocab, tokenizer_from_vocab(vocab), llm


@pytest.mark.real
@pytest.mark.parametrize("parse_special", [False, True])
def test_ids_identical_to_llama_cpp_on_real_text(zoo_model, corpus, parse_special: bool) -> None:
    _, _, tok, llm = zoo_model
    texts = corpus + list(EDGE_TEXTS) + ["<unk> <eos> <|im_end|> </s> <start_of_turn>user\nhi<end_of_turn>"]
    want = [llm.tokenize(t.encode(), add_bos=False, special=parse_special) for t in texts]
    got = tok(texts, add_special_tokens=False, split_special_tokens=not parse_special)["input_ids"]
    assert (msg := first_mismatch(texts, want, got, tok.convert_ids_to_tokens)) is None, msg


@pytest.mark.real
def test_bos_eos_and_add_bos_match_the_gguf(zoo_model, corpus) -> None:
    name, vocab, tok, llm = zoo_model
    bos, eos, add_bos = DECLARED[name]
    assert (tok.bos_token, tok.eos_token, vocab.add_bos) == (bos, eos, add_bos)
    assert (tok.bos_token_id, tok.eos_token_id) == (llm.token_bos(), llm.token_eos())
    texts = corpus[:50] + list(EDGE_TEXTS)
    want = [llm.tokenize(t.encode(), add_bos=True, special=False) for t in texts]
    got = tok(texts, split_special_tokens=True)["input_ids"]  # HF default: add_special_tokens=True
    assert (msg := first_mismatch(texts, want, got, tok.convert_ids_to_tokens)) is None, msg
    assert all((g[:1] == [tok.bos_token_id]) == add_bos for g in got)


@pytest.mark.real
def test_chat_prompt_matches_llama_cpp_special_parsing(zoo_model) -> None:
    name, vocab, tok, llm = zoo_model
    messages = [{"role": "user", "content": "What is 2+2? Answer in 3 words."},
                {"role": "assistant", "content": "It is four."}, {"role": "user", "content": "Thanks!"}]
    if vocab.chat_template:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # the gemma3 GGUF carries no template: Gemma's turn format by hand
        turns = "".join(f"<start_of_turn>{'model' if m['role'] == 'assistant' else 'user'}\n{m['content']}"
                        "<end_of_turn>\n" for m in messages)
        prompt = turns + "<start_of_turn>model\n"
    want = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    got = tok.encode(prompt)
    assert got == want
    turn_start = "<start_of_turn>" if name.startswith("gemma") else "<|im_start|>"   # Gemma vs ChatML
    assert got.count(tok.convert_tokens_to_ids(turn_start)) == prompt.count(turn_start) >= 4


@pytest.mark.real
def test_decode_round_trips_real_text(zoo_model, corpus) -> None:
    _, _, tok, _ = zoo_model
    texts = corpus + list(EDGE_TEXTS)
    decoded = tok.batch_decode(tok(texts, add_special_tokens=False)["input_ids"])
    bad = next(((t, d) for t, d in zip(texts, decoded) if t != d), None)
    assert bad is None, f"decode(encode(text)) != text: {bad[0][:200]!r} -> {bad[1][:200]!r}"


@pytest.mark.real
def test_saved_tokenizer_reloads_identically(zoo_model, corpus, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    _, vocab, tok, _ = zoo_model
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    texts = corpus[:100] + ["<|im_start|>user\nhi<|im_end|>", "<start_of_turn>user\nhi<end_of_turn>"]
    assert again(texts)["input_ids"] == tok(texts)["input_ids"]
    assert (again.bos_token, again.eos_token) == (tok.bos_token, tok.eos_token)
    assert again.chat_template == vocab.chat_template


@pytest.mark.real
def test_vocab_from_tokenizer_inverts_tokenizer_from_vocab(zoo_model) -> None:
    name, vocab, tok, _ = zoo_model
    back = vocab_from_tokenizer(tok)
    assert (back.model, back.tokens, back.merges, back.special_ids) == (vocab.model, vocab.tokens, vocab.merges,
                                                                      vocab.special_ids)
    assert (back.add_bos, back.add_eos, back.add_space_prefix, back.chat_template) == (
        vocab.add_bos, vocab.add_eos, vocab.add_space_prefix, vocab.chat_template)
    if name.startswith("smollm"):  # byte-level BPE: exact, pre-tokenizer recognised by its splits
        assert back == dataclasses.replace(vocab, add_sep=None, remove_extra_whitespaces=None)
        assert back.pre == "smollm" and back.pre in PRE_TOKENIZERS
    else:  # SPM: types as llama.cpp uses them ("</s>" is forced CONTROL), scores re-derived from merge ranks
        assert list(back.token_types) == effective_token_types(vocab)
