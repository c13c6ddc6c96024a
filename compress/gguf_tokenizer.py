"""The tokenizer a GGUF file declares, and a HF tokenizer that tokenizes exactly like llama.cpp.

transformers' GGUF loader builds a wrong tokenizer for SmolLM2 (bos = eos = `<|im_start|>`). Here the
`tokenizer.*` keys become a `GGUFVocab` (plain data; `gguf_vocab.json` beside a checkpoint) and a
`tokenizers` pipeline mirrors `llama_vocab::impl::tokenize`:

- "gpt2" (byte-level BPE): the regexes of `llm_tokenizer_bpe` for the `pre` value, applied in turn
  as isolated splits, then GPT-2 byte mapping and rank-ordered merges (`llm_tokenizer_bpe_session`).
- "llama" (SentencePiece, e.g. Gemma 3): ' ' -> U+2581 (`llama_escape_whitespace`), no pre-split,
  merges ordered by the score of the merged piece (`llm_tokenizer_spm_session`), byte fallback to
  `<0xXX>` pieces (`llama_vocab::byte_to_token`).
- CONTROL/USER_DEFINED/UNKNOWN tokens are matched on the raw text before the model runs
  (`tokenizer_st_partition`): control ones as special added tokens, user-defined ones as plain ones.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from compress.atomic import atomic_write
from compress.errors import SlimkitError
from compress.gguf_file import read_info

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

K = gguf.Keys.Tokenizer
TT = gguf.TokenType
JSON_FORMAT = "slimkit.gguf_vocab"
JSON_VERSION = 1
SPM_SPACE = "\u2581"  # SentencePiece's visible space, llama_escape_whitespace
MODELS = ("gpt2", "llama")  # tokenizer.ggml.model values we rebuild (BPE, SPM)
SPECIAL_TYPES = (TT.CONTROL, TT.UNKNOWN)  # matched only with parse_special (tokenizer_st_partition)
SPECIAL_ID_KEYS: dict[str, str] = {  # "bos" -> tokenizer.ggml.bos_token_id, ...
    name: getattr(K, f"{name.upper()}_ID") for name in (
        "bos", "eos", "unk", "sep", "pad", "mask", "eot", "eom",
        "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")}
# llama_vocab::impl::load: SPM vocabularies without these keys use bos=1, eos=2, unk=0.
SPM_DEFAULT_IDS = {"bos": 1, "eos": 2, "unk": 0}

# Regexes of llm_tokenizer_bpe::llm_tokenizer_bpe, per pre-tokenizer type.
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
              r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = _LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp BPE pre-tokenizer type: regexes applied in turn, and its load-time defaults."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a whole pre-token found in the vocab skips the merges
    add_bos: bool = False  # llama_vocab::impl::load default when add_bos_token is absent


_GPT2 = PreTokenizer((_GPT2_RE,))
_SMOLLM = PreTokenizer((r"\p{N}", _GPT2_RE))  # LLAMA_VOCAB_PRE_TYPE_SMOLLM / STARCODER / REFACT
_LLAMA3 = PreTokenizer((_LLAMA3_RE,), ignore_merges=True, add_bos=True)
_DBRX = PreTokenizer((_LLAMA3_RE,))
_QWEN2 = PreTokenizer((_QWEN2_RE,))
_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"))
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT, "gpt-2": _GPT2, "phi-2": _GPT2, "mpt": _GPT2, "olmo": _GPT2,
    "smollm": _SMOLLM, "starcoder": _SMOLLM, "refact": _SMOLLM, "codeshell": _SMOLLM,
    "llama-bpe": _LLAMA3, "llama3": _LLAMA3, "llama-v3": _LLAMA3, "falcon3": _LLAMA3,
    "dbrx": _DBRX, "smaug-bpe": _DBRX,
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "stablelm2": _QWEN2, "megrez": _QWEN2,
}
# Names written when a pre-tokenizer is recognised in a HF tokenizer, tried in this order.
_CANONICAL_PRE = ("smollm", "gpt-2", "llama-bpe", "dbrx", "qwen2", "default")
# Probe for recognising a HF pre-tokenizer by its splits (same idea as convert_hf_to_gguf's chktxt).
_PRE_PROBE = ("Hello world!  It's 2024: 3 33 333 4444 55555 3.14 I'VE we'll 'RE x\n\n \t y  \n"
              "   z\r\n caf\u00e9 na\u00efve \u00bd \u2160 \u4f60\u597d\u4e16\u754c \U0001f680\U0001f680 "
              "----==== ...!!! \"quoted\" (paren) a-b_c $100 +1 <tag> \u00a0nbsp end  ")


@dataclass(frozen=True)
class GGUFVocab:
    """Everything llama.cpp reads from the `tokenizer.*` keys of a GGUF file.

    Flags are the values llama.cpp ends up using (its defaults filled in when a key is absent), so
    writing them back explicitly never changes behaviour. Treat `special_ids` as read-only.
    """

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) | "llama" (SentencePiece)
    pre: str | None  # tokenizer.ggml.pre; None when absent (llama.cpp then uses "default")
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]  # gguf.TokenType values
    scores: tuple[float, ...] | None = None
    merges: tuple[str, ...] | None = None  # "left right", rank order
    special_ids: dict[str, int] = field(default_factory=dict)  # keys of SPECIAL_ID_KEYS
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    add_sep: bool | None = None
    remove_extra_whitespaces: bool | None = None
    chat_template: str | None = None

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if self.model not in MODELS:
            raise SlimkitError(f"tokenizer model {self.model!r} is not supported (supported: {', '.join(MODELS)})")
        if n == 0 or len(self.token_types) != n:
            raise SlimkitError(f"vocabulary has {n} tokens but {len(self.token_types)} token types; re-export it")
        if self.scores is not None and len(self.scores) != n:
            raise SlimkitError(f"vocabulary has {n} tokens but {len(self.scores)} scores; re-export it")
        if self.model == "gpt2" and not self.merges:
            raise SlimkitError("a 'gpt2' (BPE) vocabulary needs merges; re-export it from its tokenizer.json")
        if len(set(self.tokens)) != n:  # llama_vocab::impl::load asserts unique token texts
            raise SlimkitError("vocabulary has duplicate token texts; llama.cpp cannot load it")
        for name, tid in self.special_ids.items():
            if name not in SPECIAL_ID_KEYS or not 0 <= tid < n:
                raise SlimkitError(f"special token {name}={tid} is unknown or outside the vocabulary of {n}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": JSON_FORMAT, "version": JSON_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GGUFVocab:
        if d.get("format") != JSON_FORMAT or d.get("version") != JSON_VERSION:
            raise SlimkitError(f"not a {JSON_FORMAT} v{JSON_VERSION} document; re-create it with vocab_from_gguf")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k not in ("format", "version")}
        return cls(**d)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file, fsync, rename); tokens that are not UTF-8 survive as escapes."""
        # ensure_ascii keeps surrogate-escaped bytes representable
        atomic_write(Path(path), json.dumps(self.to_dict()).encode("ascii"))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> GGUFVocab:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise SlimkitError(f"cannot read the GGUF vocabulary {path} ({exc}); re-save the checkpoint") from exc


# ---------------------------------------------------------------------------------------- GGUF in


def vocab_from_gguf(path_or_reader: str | os.PathLike[str] | gguf.GGUFReader) -> GGUFVocab:
    """Read the tokenizer of a GGUF file, with llama.cpp's defaults (llama_vocab::impl::load)."""
    reader = isinstance(path_or_reader, gguf.GGUFReader)
    get = read_info(path_or_reader.data.filename if reader else path_or_reader).metadata.get
    model, pre, tokens = get(K.MODEL), get(K.PRE), get(K.LIST)
    if model not in MODELS or not tokens:
        raise SlimkitError(f"GGUF tokenizer model {model!r} is not supported (supported: {', '.join(MODELS)}); "
                           "use a GGUF with a BPE or SentencePiece vocabulary")
    types = get(K.TOKEN_TYPE) or [int(TT.NORMAL)] * len(tokens)
    special = {name: v for name, key in SPECIAL_ID_KEYS.items() if (v := get(key)) is not None and v < len(tokens)}
    if model == "llama":
        special = {**{k: v for k, v in SPM_DEFAULT_IDS.items() if v < len(tokens)}, **special}
        add_bos_default, add_space_default = True, True
    else:  # an unknown pre only matters here when llama.cpp would have to pick add_bos from it
        add_bos_default, add_space_default = False if get(K.ADD_BOS) is not None else _pre(pre).add_bos, False
    scores, merges = get(K.SCORES), get(K.MERGES)
    flag = lambda key, default: default if (v := get(key)) is None else bool(v)  # noqa: E731
    return GGUFVocab(
        model=model, pre=pre, tokens=tuple(tokens), token_types=tuple(int(t) for t in types),
        scores=None if scores is None else tuple(float(s) for s in scores),
        merges=None if merges is None else tuple(merges), special_ids=special,
        add_bos=flag(K.ADD_BOS, add_bos_default), add_eos=flag(K.ADD_EOS, False),
        add_space_prefix=flag(K.ADD_PREFIX, add_space_default),
        add_sep=None if get(K.ADD_SEP) is None else bool(get(K.ADD_SEP)),
        remove_extra_whitespaces=None if get(K.REMOVE_EXTRA_WS) is None else bool(get(K.REMOVE_EXTRA_WS)),
        chat_template=get(K.CHAT_TEMPLATE))


def _pre(pre: str | None) -> PreTokenizer:
    spec = PRE_TOKENIZERS.get(pre or "default")
    if spec is None:
        raise SlimkitError(f"BPE pre-tokenizer {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZERS)}); "
                           "add its llama.cpp regexes to compress.gguf_tokenizer.PRE_TOKENIZERS")
    return spec


# --------------------------------------------------------------------------------- HF tokenizer out

# llama_vocab::impl::load turns tokens into CONTROL by their text, whatever their GGUF type says:
# every end-of-generation text, and FIM texts when the file has no id for that FIM role.
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~["))
_FIM_TEXTS: dict[str, tuple[str, ...]] = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
                "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
                "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
                "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}


def effective_token_types(vocab: GGUFVocab) -> list[int]:
    """Token types as llama.cpp matches them, after its load-time fixups by token text.

    Not mirrored: the gpt-oss/solar-open/plamo/gemma4 exceptions (their vocabularies are not supported
    here) and, when several FIM texts of one role exist, llama.cpp forcing only the first it finds.
    """
    texts = set(_EOG_TEXTS).union(*(c for role, c in _FIM_TEXTS.items() if role not in vocab.special_ids))
    return [int(TT.CONTROL) if text in texts and ttype != TT.UNKNOWN else int(ttype)
            for text, ttype in zip(vocab.tokens, vocab.token_types)]


def _spm_merges(vocab: GGUFVocab) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, best merged-piece score first.

    llm_tokenizer_spm_session merges any adjacent pair whose concatenation is a piece, highest score
    first; a BPE merge list sorted by that score reproduces it (ties: lower id, then shorter left).
    """
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    scores = vocab.scores or (0.0,) * len(vocab.tokens)
    ranked = []
    for tid, piece in enumerate(vocab.tokens):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[tid], tid, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _bpe_merges(vocab: GGUFVocab) -> list[tuple[str, str]]:
    ids = set(vocab.tokens)
    merges = []
    for m in vocab.merges or ():
        pos = m.find(" ", 1)  # llama_vocab::impl::load splits at the first space after position 0
        left, right = m[:pos], m[pos + 1:]
        if pos < 0 or left + right not in ids:
            raise SlimkitError(f"merge {m!r} makes a token outside the vocabulary; the GGUF vocabulary is broken")
        merges.append((left, right))
    return merges


def _pre_tokenizer(spec: PreTokenizer):
    from tokenizers import Regex, pre_tokenizers as pt

    splits = [pt.Split(Regex(r), behavior="isolated", invert=False) for r in spec.regexes]
    return pt.Sequence([*splits, pt.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])


def _backend(vocab: GGUFVocab):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    ids = {t: i for i, t in enumerate(vocab.tokens)}
    if vocab.model == "gpt2":
        spec = _pre(vocab.pre)
        tok = Tokenizer(models.BPE(ids, _bpe_merges(vocab), ignore_merges=spec.ignore_merges))
        tok.pre_tokenizer = _pre_tokenizer(spec)
        tok.decoder = decoders.ByteLevel()
    else:
        unk = vocab.special_ids.get("unk")
        tok = Tokenizer(models.BPE(ids, _spm_merges(vocab), byte_fallback=True,
                                   unk_token=None if unk is None else vocab.tokens[unk]))
        steps = [normalizers.Replace(" ", SPM_SPACE)]  # llama_escape_whitespace
        if vocab.add_space_prefix:  # llama.cpp prefixes every text fragment that follows a special one
            steps.insert(0, normalizers.Prepend(SPM_SPACE))
        tok.normalizer = normalizers.Sequence(steps)
        dec = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if vocab.add_space_prefix:
            dec.append(decoders.Strip(" ", 1, 0))
        tok.decoder = decoders.Sequence(dec)
    added = [AddedToken(t, special=ty in SPECIAL_TYPES, normalized=False)
             for t, ty in zip(vocab.tokens, effective_token_types(vocab)) if ty in (*SPECIAL_TYPES, TT.USER_DEFINED)]
    tok.add_tokens(added)
    tok.post_processor = _post_processor(vocab)
    return tok


def _post_processor(vocab: GGUFVocab):
    """BOS/EOS around each sequence as llama_tokenize(add_special=true) adds them (add_bos/add_eos)."""
    from tokenizers import processors

    def ends(key: str, on: bool) -> list[tuple[str, int]]:
        i = vocab.special_ids.get(key)
        return [(vocab.tokens[i], i)] if on and i is not None else []

    bos, eos = ends("bos", vocab.add_bos), ends("eos", vocab.add_eos)
    seq = lambda s: " ".join(f"{t}:{s}" for t, _ in (*bos, ("$" + "AB"[s], 0), *eos))  # noqa: E731
    return processors.TemplateProcessing(single=seq(0), pair=f"{seq(0)} {seq(1)}", special_tokens=bos + eos)


def tokenizer_from_vocab(vocab: GGUFVocab, parse_special: bool = True) -> PreTrainedTokenizerFast:
    """A HF fast tokenizer whose ids equal llama.cpp's for the same text.

    `encode(text, add_special_tokens=False)` equals `llama_tokenize(text, add_special=false,
    parse_special)`; the default `encode` adds BOS/EOS as `add_bos`/`add_eos` say. With
    parse_special=False (HF's split_special_tokens) control-token text such as "<unk>" in user text
    is tokenized as text, as llama.cpp does without parse_special; user-defined tokens still match.
    """
    from transformers import PreTrainedTokenizerFast

    name = lambda key: None if (i := vocab.special_ids.get(key)) is None else vocab.tokens[i]  # noqa: E731
    kwargs = {f"{k}_token": name(k) for k in ("bos", "eos", "unk", "pad", "sep", "mask") if name(k) is not None}
    hf = PreTrainedTokenizerFast(tokenizer_object=_backend(vocab), add_bos_token=vocab.add_bos,
                                 add_eos_token=vocab.add_eos, clean_up_tokenization_spaces=False,
                                 split_special_tokens=not parse_special, **kwargs)
    if vocab.chat_template:
        hf.chat_template = vocab.chat_template
    return hf


# ---------------------------------------------------------------------------------- HF tokenizer in


def _detect_pre(backend_json: dict[str, Any], hf_pre) -> str:
    if hf_pre is None:
        raise SlimkitError("byte-level BPE tokenizer without a pre-tokenizer; llama.cpp cannot reproduce it")
    want = [s for s, _ in hf_pre.pre_tokenize_str(_PRE_PROBE)]
    ignore_merges = bool(backend_json["model"].get("ignore_merges"))
    for name in _CANONICAL_PRE:
        spec = PRE_TOKENIZERS[name]
        got = [s for s, _ in _pre_tokenizer(spec).pre_tokenize_str(_PRE_PROBE)]
        if got == want and spec.ignore_merges == ignore_merges:
            return name
    raise SlimkitError("the tokenizer's pre-tokenizer matches none llama.cpp implements here "
                       f"({', '.join(_CANONICAL_PRE)}); convert it with llama.cpp's convert_hf_to_gguf.py")


def _spm_layout(backend_json: dict[str, Any]) -> tuple[bool, bool]:
    """(is SentencePiece-style: byte fallback + U+2581 for spaces, prepends U+2581 to the text)."""
    text = json.dumps([backend_json.get("normalizer"), backend_json.get("pre_tokenizer")], ensure_ascii=False)
    prefix = '"Prepend"' in text or re.search(r'"prepend_scheme": "(always|first)"', text) is not None
    return bool(backend_json["model"].get("byte_fallback")) and SPM_SPACE in text, prefix


def vocab_from_tokenizer(tok: PreTrainedTokenizerBase) -> GGUFVocab:
    """The GGUF vocabulary of a HF fast tokenizer: byte-level BPE, or SentencePiece-style BPE."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise SlimkitError(f"{type(tok).__name__} has no tokenizer.json backend; save a fast tokenizer first")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise SlimkitError(f"{model.get('type')} tokenizers are not supported; only BPE (byte-level or SentencePiece)")
    spm, space_prefix = _spm_layout(spec)
    if not spm and "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise SlimkitError("BPE tokenizer is neither byte-level nor SentencePiece-style; llama.cpp cannot run it")
    id_to_text = {i: t for t, i in backend.get_vocab(with_added_tokens=True).items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(max(id_to_text) + 1):
        text, ttype = id_to_text.get(i), TT.NORMAL
        if text is None or text == f"[PAD{i}]":  # a hole in the ids: convert_hf_to_gguf's UNUSED filler
            text, ttype = f"[PAD{i}]", TT.UNUSED
        elif i in added:
            ttype = TT.CONTROL if added[i]["special"] else TT.USER_DEFINED
            if ttype == TT.USER_DEFINED and spm:
                text = text.replace(SPM_SPACE, " ")  # llama.cpp matches user-defined tokens on raw text
        elif spm and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            ttype = TT.BYTE
        tokens.append(text)
        types.append(int(ttype))
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", [])]
    special = {k: i for k in ("bos", "eos", "unk", "pad", "sep", "mask")
               if (i := getattr(tok, f"{k}_token_id", None)) is not None}
    probe = tok("a")["input_ids"]
    add_bos = special.get("bos") is not None and probe[:1] == [special["bos"]]
    add_eos = special.get("eos") is not None and probe[-1:] == [special["eos"]]
    template = tok.chat_template if isinstance(getattr(tok, "chat_template", None), str) else None
    if spm:
        return GGUFVocab(model="llama", pre="default", tokens=tuple(tokens), token_types=tuple(types),
                         scores=_scores_from_merges(tokens, types, pairs), special_ids=special,
                         add_bos=add_bos, add_eos=add_eos, add_space_prefix=space_prefix,
                         chat_template=template)
    return GGUFVocab(model="gpt2", pre=_detect_pre(spec, backend.pre_tokenizer), tokens=tuple(tokens),
                     token_types=tuple(types), merges=tuple(" ".join(p) for p in pairs), special_ids=special,
                     add_bos=add_bos, add_eos=add_eos, add_space_prefix=False, chat_template=template)


# Scores of pieces no merge produces: SentencePiece's convention for control/user pieces, bytes at 0.
NON_MERGED_SCORE = -1000.0
BYTE_SCORE = 0.0


def _scores_from_merges(tokens: list[str], types: list[int], pairs: list[list[str]]) -> tuple[float, ...]:
    """SPM scores that make llm_tokenizer_spm_session pick merges in the BPE rank order."""
    first_rank: dict[str, int] = {}
    for rank, (left, right) in enumerate(pairs):
        first_rank.setdefault(left + right, rank)
    return tuple(BYTE_SCORE if ttype == TT.BYTE else -float(first_rank[text])
                 if ttype == TT.NORMAL and text in first_rank else NON_MERGED_SCORE
                 for text, ttype in zip(tokens, types))
