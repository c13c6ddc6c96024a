"""Tokenizer metadata of a GGUF file: every `tokenizer.*` key llama.cpp reads, from a GGUFVocab.

The keys and their types are the ones `llama_vocab::impl::load` checks (tokens: string array,
token_type: int32 array, scores: float32 array, merges: string array, ids: uint32, flags: bool).
"""
from __future__ import annotations

import os
from pathlib import Path

import gguf

from compress.errors import SlimkitError
from compress.gguf_tokenizer import SPECIAL_ID_KEYS, GGUFVocab

# general.architecture written by write_vocab_only when none is given: any architecture llama.cpp
# knows works, because llama_model_base::load_hparams stops after general.name for vocab_only.
DEFAULT_VOCAB_ONLY_ARCH = "llama"


def _raw(text: str) -> str | bytes:
    """Token text as the writer takes it; surrogate escapes (non-UTF-8 bytes) go back to bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    """Add the vocabulary's tokenizer keys to a writer that has not written its KV data yet.

    Flags are always written (explicit values are what llama.cpp would otherwise default to);
    special ids, add_sep, remove_extra_whitespaces, scores, merges and the chat template only when
    the vocabulary has them, so absent keys keep llama.cpp's own defaults.
    """
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list([_raw(t) for t in vocab.tokens])
    writer.add_token_types([int(t) for t in vocab.token_types])
    if vocab.scores is not None:
        writer.add_token_scores([float(s) for s in vocab.scores])
    if vocab.merges is not None:
        writer.add_token_merges([_raw(m) for m in vocab.merges])
    for name, tid in vocab.special_ids.items():
        writer.add_uint32(SPECIAL_ID_KEYS[name], int(tid))
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.add_sep is not None:
        writer.add_add_sep_token(vocab.add_sep)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def write_vocab_only(path: str | os.PathLike[str], vocab: GGUFVocab, arch: str = DEFAULT_VOCAB_ONLY_ARCH) -> Path:
    """A tensor-less GGUF that llama.cpp opens with vocab_only=True (to check a tokenizer alone).

    llama.cpp needs only general.architecture (a known name) and the tokenizer keys for that.
    """
    if arch not in gguf.MODEL_ARCH_NAMES.values():
        raise SlimkitError(f"unknown GGUF architecture {arch!r}; use one of gguf.MODEL_ARCH_NAMES, e.g. 'llama'")
    path = Path(path)
    writer = gguf.GGUFWriter(path, arch)  # writes general.architecture
    try:
        add_vocab(writer, vocab)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
