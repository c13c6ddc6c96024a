"""export.gguf.tokenizer: the tokenizer keys we write make llama.cpp tokenize exactly like the source.

Vocab-only GGUF files (general.architecture + tokenizer.*, no tensors) are opened by llama.cpp with
vocab_only=True and compared token for token with the original GGUF (real) or our HF tokenizer.
"""
from __future__ import annotations

import dataclasses
import gzip
import random
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from compress.errors import SlimkitError  # noqa: E402
from compress.gguf_tokenizer import GGUFVocab, tokenizer_from_vocab, vocab_from_gguf, vocab_from_tokenizer  # noqa: E402
from export.gguf.tokenizer import write_vocab_only  # noqa: E402

TT = gguf.TokenType
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TEXT_SOURCES = ("tinystories_valid_head", "tiny_shakespeare", "wikitext2_v1_tokenized_valid")
CHARS_PER_SOURCE = 40_000
CHUNK_CHARS = 400
ZOO_ARCH = {"smollm2-135m-instruct": "llama", "gemma3-270m": "gemma3", "qwen2.5-coder-0.5b-instruct": "qwen2"}  # general.architecture of each
FUZZ_ALPHABET = list("abcABC012 '.,!-<>|") + [" ", "  ", "\n", "\t", "\r", "\u00e9", "\u4f60", "\U0001f680", "\u00bd",
                                                 "\u2160", "\u00a0", "<|im_end|>", "<s>", "abc", "'S", "'ll", "1234"]
FUZZ_STRINGS = 3000
COMBO_SAMPLE = 100
SPECIAL_TEXTS = ["<|im_start|>user\nhi<|im_end|>\n", "<start_of_turn>x<end_of_turn><eos> </s> <unk>"]


def real_text_chunks() -> list[str]:
    if not (DATA / "text").is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    chunks: list[str] = []
    for name in TEXT_SOURCES:
        text = gzip.open(DATA / "text" / f"{name}.txt.gz", "rt", encoding="utf-8").read()
        chunks += [text[i:i + CHUNK_CHARS] for i in range(0, CHARS_PER_SOURCE, CHUNK_CHARS)]
        chunks += [line for line in text.splitlines(keepends=True) if any(ord(c) > 127 for c in line)]
    return chunks


def fuzz_strings(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(1, 30))) for _ in range(FUZZ_STRINGS)]


def tiny_vocabs(pre: str = "smollm") -> dict[str, GGUFVocab]:
    """A byte-level BPE with a merge for every pair of some symbols (so every pre-token boundary shows
    in the ids) and an SPM vocabulary with every pair and some triples of a few pieces, random scores."""
    from tokenizers import pre_tokenizers

    rng = random.Random(0)
    symbols = list("abcABC012'.,!-<>|") + ["\u0120", "\u010a", "\u0109"]  # Ġ Ċ ĉ: space, \n, \t
    merges = [f"{x} {y}" for x in symbols for y in symbols]
    bpe_tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *sorted(pre_tokenizers.ByteLevel.alphabet()),
                  *[m.replace(" ", "") for m in merges]]
    bpe = GGUFVocab(model="gpt2", pre=pre, tokens=tuple(bpe_tokens),
                    token_types=tuple([3] * 3 + [1] * (len(bpe_tokens) - 3)), merges=tuple(merges),
                    special_ids={"bos": 1, "eos": 2, "unk": 0}, chat_template="{{ 'x' }}")
    chars = list("abc\u2581")
    pieces = [*chars, *[x + y for x in chars for y in chars], "abc", "\u2581ab", "bca", "\u2581\u2581a", "cab"]
    spm_tokens = ["<unk>", "<bos>", "<eos>", *[f"<0x{b:02X}>" for b in range(256)], *pieces, "<s>", "  "]
    spm_types = [3, 3, 3] + [int(TT.BYTE)] * 256 + [1] * len(pieces) + [int(TT.USER_DEFINED)] * 2
    spm = GGUFVocab(model="llama", pre="default", tokens=tuple(spm_tokens), token_types=tuple(spm_types),
                    scores=tuple([-1000.0] * 3 + [0.0] * 256 + [-rng.randint(0, 800) / 8 for _ in pieces] + [0.0] * 2),
                    special_ids={"bos": 1, "eos": 2, "unk": 0, "pad": 0}, add_bos=True, add_space_prefix=True,
                    add_sep=False)
    return {"bpe": bpe, "spm": spm}


@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_add_vocab_round_trips_through_a_gguf_file(tmp_path: Path, kind: str) -> None:
    v = tiny_vocabs()[kind]
    path = write_vocab_only(tmp_path / f"{kind}.gguf", v)
    assert vocab_from_gguf(path) == v
    reader = gguf.GGUFReader(path)
    assert vocab_from_gguf(reader) == v
    K, VT = gguf.Keys.Tokenizer, gguf.GGUFValueType
    assert reader.fields[K.TOKEN_TYPE].types == [VT.ARRAY, VT.INT32]  # llama_vocab::impl::load checks these
    assert reader.fields[K.BOS_ID].types == [VT.UINT32]
    assert reader.fields["general.architecture"].contents() == "llama"


def test_unknown_architecture_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SlimkitError, match="architecture"):
        write_vocab_only(tmp_path / "x.gguf", tiny_vocabs()["bpe"], arch="not-an-arch")


@pytest.mark.parametrize("kind, pre", [("spm", "default"), *[("bpe", p) for p in
                                       ("smollm", "gpt-2", "llama-bpe", "dbrx", "qwen2", "default")]])
def test_llama_cpp_tokenizes_tiny_vocab_like_our_hf_tokenizer(tmp_path: Path, kind: str, pre: str) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    v = tiny_vocabs(pre)[kind]
    llm = llama_cpp.Llama(model_path=str(write_vocab_only(tmp_path / "v.gguf", v)), vocab_only=True, verbose=False)
    tok = tokenizer_from_vocab(v)
    texts = fuzz_strings()
    for special in (False, True):
        want = [llm.tokenize(t.encode(), add_bos=True, special=special) for t in texts]
        got = tok(texts, split_special_tokens=not special)["input_ids"]
        bad = next(((t, w, g) for t, w, g in zip(texts, want, got) if w != g), None)
        pieces = tok.convert_ids_to_tokens
        assert bad is None, f"{bad[0]!r}: llama.cpp {pieces(bad[1])} ours {pieces(bad[2])}"


# ----------------------------------------------------------------------------- real zoo GGUF models


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return real_text_chunks()


@pytest.fixture(scope="module", params=list(ZOO_ARCH))
def original(request):
    from conftest import zoo_path

    llama_cpp = pytest.importorskip("llama_cpp")
    path = zoo_path(request.param)
    return request.param, path, llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def assert_same_tokenization(a, b, texts: list[str]) -> None:
    """All texts plainly; the other add_bos/special combinations on a sample and the special strings."""
    sample = texts[:COMBO_SAMPLE] + SPECIAL_TEXTS
    for add_bos, special, part in ((False, False, texts), (True, False, sample), (False, True, sample),
                                   (True, True, sample)):
        for t in part:
                want, got = a.tokenize(t.encode(), add_bos, special), b.tokenize(t.encode(), add_bos, special)
                assert want == got, f"add_bos={add_bos} special={special} {t[:200]!r}: {want[:40]} != {got[:40]}"
    assert (a.token_bos(), a.token_eos(), a.n_vocab()) == (b.token_bos(), b.token_eos(), b.n_vocab())


@pytest.mark.real
def test_rewritten_vocab_tokenizes_like_the_original(original, corpus, tmp_path: Path) -> None:
    import llama_cpp

    name, path, llm = original
    vocab = vocab_from_gguf(path)
    out = write_vocab_only(tmp_path / "vocab.gguf", vocab, ZOO_ARCH[name])
    again = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    assert vocab_from_gguf(out) == vocab
    assert again.metadata.get("tokenizer.chat_template") == llm.metadata.get("tokenizer.chat_template")
    assert_same_tokenization(llm, again, corpus)


@pytest.mark.real
def test_vocab_from_hf_tokenizer_tokenizes_like_the_original(original, corpus, tmp_path: Path) -> None:
    import llama_cpp

    name, path, llm = original
    vocab = vocab_from_tokenizer(tokenizer_from_vocab(vocab_from_gguf(path)))
    out = write_vocab_only(tmp_path / "from_hf.gguf", vocab, ZOO_ARCH[name])
    again = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    assert_same_tokenization(llm, again, corpus)
    assert dataclasses.asdict(vocab_from_gguf(out))["tokens"] == vocab.tokens
