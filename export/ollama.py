"""Ollama packaging: a Modelfile for a GGUF, a package directory, and a local model store.

Format facts come from Ollama's Go source: parser/parser.go (Modelfile grammar: no escapes, `"`
and triple-quote values), types/model/name.go (names). The store itself (blobs, manifest, config,
Go-compatible JSON) is export.ollama_store; install() reads the Modelfile and GGUF and calls it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from compress.errors import SlimkitError
from export import ollama_store
# Re-exported: the store's format constants are part of this module's API.
from export.ollama_store import (CONFIG_ARCH, CONFIG_OS, MEDIA_CONFIG, MEDIA_LICENSE,  # noqa: F401
                                 MEDIA_MANIFEST, MEDIA_MODEL, MEDIA_PARAMS, MEDIA_SYSTEM, MEDIA_TEMPLATE)

MODELFILE = "Modelfile"
MAX_DEFAULT_NUM_CTX = 4096  # default context cap: KV-cache memory on phones and edge boards
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
_SENTINEL = "SLIMKIT-SENTINEL-5f0c"  # user message content when rendering the jinja template
_MISSING = "!MISSING!"  # name.go's MissingPart: a promised but empty part, never valid
_NAME_PARTS = ((350, b"-_.:"), (80, b"-_"), (80, b"-_."), (80, b"-_."))  # host, namespace, model, tag
_COMMANDS = frozenset({"from", "license", "template", "system", "adapter", "draft", "renderer",
                       "parser", "parameter", "message", "requires"})


@dataclass(frozen=True)
class ChatFormat:
    """A chat format: how to spot it in a GGUF's jinja template, and its Ollama Go template."""
    name: str
    marker: str  # substring of the jinja chat template that identifies the format
    template: str  # Go template ranging over .Messages, like Ollama's own templates
    stops: tuple[str, ...]
    system_pattern: str  # regex for a system prompt in the text rendered before the user message


CHATML = ChatFormat(
    "chatml", "<|im_start|>",
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n",
    ("<|im_start|>", "<|im_end|>"), r"<\|im_start\|>system\n(.*?)<\|im_end\|>")
# Gemma has no system role: Google's template prepends "SYSTEM\n\n" to the first user turn.
GEMMA = ChatFormat(
    "gemma", "<start_of_turn>",
    "{{- $system := .System }}\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}<start_of_turn>user\n'
    '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>\n'
    '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
    "{{ end }}\n{{- end }}<start_of_turn>model\n",
    ("<end_of_turn>",), r"<start_of_turn>user\n(.+?)\n\n$")
# Llama 3's header format (Meta's template; Ollama's llama3 template has the same shape)
LLAMA3 = ChatFormat(
    "llama3", "<|start_header_id|>",
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
    ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>")
CHAT_FORMATS = {f.name: f for f in (CHATML, GEMMA, LLAMA3)}
_TURN_TOKENS = frozenset(t for f in CHAT_FORMATS.values() for t in (f.marker, *f.stops))


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    chat_template: str | None
    context_length: int | None
    file_type: str  # Ollama's FileType.String(): "Q8_0", ...; "unknown" if absent or 0 (F32)
    parameter_count: int  # sum of tensor elements, as Ollama's GGUF decoder counts
    bos: str | None
    eos: str | None
    end_tokens: tuple[str, ...]  # texts of the eos / eot / eom token ids
    turn_tokens: frozenset[str]  # the chat formats' markers and stops found in the vocabulary


def modelfile_for(gguf_path: str | os.PathLike[str], *, license_text: str | None = None,
                  num_ctx: int | None = None, system: str | None = None,
                  chat_format: str | None = None) -> str:
    """A Modelfile for the GGUF placed beside it (FROM ./NAME.gguf).

    chat_format ("chatml" | "gemma") overrides detection from tokenizer.chat_template; system=None
    keeps the default system prompt the GGUF's jinja template injects, "" writes none.
    """
    path = Path(gguf_path)
    info = read_gguf(path)
    fmt = _chat_format(info, chat_format, path.name)
    system = _default_system(info, fmt, path.name) if system is None else system
    if num_ctx is None:
        num_ctx = min(info.context_length or MAX_DEFAULT_NUM_CTX, MAX_DEFAULT_NUM_CTX)
    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx <= 0:
        raise SlimkitError(f"num_ctx must be a positive integer, got {num_ctx!r}")
    lines = [f"# Ollama Modelfile written by slimkit for {path.name} (chat format: {fmt.name})",
             f"FROM {_quote('./' + path.name, 'the GGUF file name')}",
             f"TEMPLATE {_quote(fmt.template, 'TEMPLATE', block=True)}"]
    if system:
        lines.append(f"SYSTEM {_quote(system, 'the system prompt', block=True)}")
    lines += [f"PARAMETER stop {_quote(s, 'a stop token')}" for s in dict.fromkeys(fmt.stops + info.end_tokens)]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    if license_text:
        text = license_text.replace("\r\n", "\n")
        lines.append(f"LICENSE {_quote(text, 'the license text', block=True)}")
    return "\n".join(lines) + "\n"


def write_package(gguf_path: str | os.PathLike[str], name: str, out_dir: str | os.PathLike[str],
                  **modelfile_kwargs: Any) -> Path:
    """OUT_DIR/Modelfile with the GGUF beside it (hard link, else copy); returns the Modelfile path."""
    src, out = Path(gguf_path), Path(out_dir)
    parse_name(name)
    if not src.is_file():
        raise SlimkitError(f"{src} is not a file; pass the .gguf file to package")
    text = f"# install: ollama create {name} -f {MODELFILE}\n" + modelfile_for(src, **modelfile_kwargs)
    created = ollama_store.make_dirs(out, "the package directory")
    dst, placed = out / src.name, False
    try:
        if not (dst.exists() and os.path.samefile(src, dst)):
            ollama_store.atomic_write(dst, src=src, link=True)
            placed = True
        ollama_store.atomic_write(out / MODELFILE, text.encode())
    except OSError as exc:
        if placed:
            dst.unlink(missing_ok=True)
        ollama_store.remove_empty(created)
        raise SlimkitError(f"cannot write the package in {out} ({exc.strerror or exc}); "
                           "choose a writable output directory (-o)") from None
    return out / MODELFILE


def install(package_dir: str | os.PathLike[str], name: str,
            models_dir: str | os.PathLike[str] | None = None) -> str:
    """`ollama create` when ollama is on PATH and models_dir is None; else write the model store
    (models_dir, $OLLAMA_MODELS or ~/.ollama/models) as `ollama create` does. Says what it did."""
    modelfile = Path(package_dir)
    modelfile = modelfile / MODELFILE if modelfile.is_dir() else modelfile
    if not modelfile.is_file():
        raise SlimkitError(f"no Modelfile at {modelfile}; write the package first (slimkit package ollama)")
    parts = parse_name(name)
    exe = shutil.which("ollama") if models_dir is None else None
    if exe:
        proc = subprocess.run([exe, "create", name, "-f", str(modelfile.resolve())],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
            raise SlimkitError(f"`ollama create {name}` failed ({detail}); start the server "
                               "(`ollama serve`) or pass a models directory to write the store directly")
        return f"ran: ollama create {name} -f {modelfile.resolve()}"
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    try:
        text = modelfile.read_bytes().decode("utf-8", errors="replace")  # Go's decoder replaces too
        req = ollama_store.create_request(parse_modelfile(text), modelfile.parent)
        summary = ollama_store.write_store(req, read_gguf(req["model"]), parts, root)
    except OSError as exc:
        raise SlimkitError(f"cannot write the Ollama model store {root} ({exc.strerror or exc}); "
                           "pass a writable models directory (--models-dir)") from None
    return f"installed {name} into {root}: {summary}"


def default_models_dir() -> Path:
    """envconfig.Models(): $OLLAMA_MODELS (trimmed of spaces and quotes) or ~/.ollama/models."""
    env = os.environ.get("OLLAMA_MODELS", "").strip().strip("\"'")
    return Path(env) if env else Path.home() / ".ollama" / "models"


def parse_name(name: str) -> tuple[str, str, str, str]:
    """[host/][namespace/]model[:tag] -> (host, namespace, model, tag) like name.go ParseName."""
    s, tag, host, namespace = name, "", "", ""
    if s.rfind(":") > s.rfind("/"):
        s, tag = _cut(s, ":")
    s, model = _cut(s, "/") if "/" in s else ("", s)
    if s:
        s, namespace = _cut(s, "/") if "/" in s else ("", s)
        host = s.split("://", 1)[-1]
    parts = (host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)
    for part, (limit, extra) in zip(parts, _NAME_PARTS):
        raw = part.encode()
        if not (1 <= len(raw) <= limit and _alnum(raw[0]) and all(_alnum(c) or c in extra for c in raw)):
            raise SlimkitError(f"invalid Ollama model name {name!r}: use NAME[:TAG] of letters, digits, "
                               "'_', '-', '.' (1-80 characters, starting with a letter, digit or '_')")
    return parts


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """The GGUF metadata the Modelfile and the store config need (compress.gguf_file's checked,
    cached header parser: no tensor is mapped)."""
    import gguf
    import numpy as np

    from compress import gguf_file

    if not Path(path).is_file():
        raise SlimkitError(f"cannot read {path}; pass an existing .gguf file")
    info = gguf_file.read_info(path)
    value = info.get
    tokens = value(gguf.Keys.Tokenizer.LIST) or []

    def token(key: str) -> str | None:
        idx = value(key)
        return tokens[idx] if isinstance(idx, int) and 0 <= idx < len(tokens) else None

    if not (arch := value(gguf.Keys.General.ARCHITECTURE)):
        raise SlimkitError(f"{path} has no general.architecture; pass a model GGUF")
    names = {t.value: t.name.split("_", 1)[1] for t in gguf.LlamaFileType if t.value not in (0, 1024)}
    ends = [token(k) for k in (gguf.Keys.Tokenizer.EOS_ID, gguf.Keys.Tokenizer.EOT_ID, gguf.Keys.Tokenizer.EOM_ID)]
    return GGUFInfo(arch, value(gguf.Keys.Tokenizer.CHAT_TEMPLATE),
                    value(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch)),
                    names.get(value(gguf.Keys.General.FILE_TYPE), "unknown"),
                    sum(int(np.prod(t.shape, dtype=np.int64)) for t in info.tensors),
                    token(gguf.Keys.Tokenizer.BOS_ID), ends[0], tuple(t for t in ends if t),
                    frozenset(_TURN_TOKENS.intersection(tokens)))


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(name, args) as parser.go's ParseFile yields them: FROM -> ("model", path), PARAMETER K V ->
    (K, V), MESSAGE R T -> ("message", "R: T"); values unquoted, runes it drops dropped."""
    text, out, i = text.removeprefix("\ufeff"), [], 0
    while i < len(text):
        if text[i] in " \t\r\n":
            i += 1
        elif text[i] == "#":  # comment to the end of the line
            i = len(text) if (nl := text.find("\n", i)) < 0 else nl + 1
        else:
            j = _scan(text, i, str.isalpha)
            word, prefix = text[i:j].lower(), ""
            if word not in _COMMANDS or text[j:j + 1] not in (" ", "\t"):
                raise _syntax(text, i, "expected an instruction (FROM, TEMPLATE, PARAMETER, ...)")
            name, k = ("model" if word == "from" else word), j
            if word == "parameter":
                k = _scan(text, j + 1, lambda c: c.isalnum() or c == "_")
                name = text[j + 1:k]
            elif word == "message":
                k = _scan(text, j + 1, str.isalpha)
                prefix = text[j + 1:k] + ": "
                if prefix not in ("system: ", "user: ", "assistant: "):
                    raise _syntax(text, j, 'a MESSAGE role must be "system", "user" or "assistant"')
            if text[k:k + 1] not in (" ", "\t"):
                raise _syntax(text, j, f"malformed {word.upper()} line")
            args, i = _value(text, k + 1)
            out.append((name, prefix + args))
    if not any(cmd == "model" for cmd, _ in out):
        raise SlimkitError("the Modelfile has no FROM line; add FROM ./MODEL.gguf")
    return out


# -- Modelfile helpers ---------------------------------------------------------------------------

def _chat_format(info: GGUFInfo, chosen: str | None, what: str) -> ChatFormat:
    if chosen is not None:
        if chosen not in CHAT_FORMATS:
            raise SlimkitError(f"unknown chat format {chosen!r}; choose one of {', '.join(CHAT_FORMATS)}")
        return CHAT_FORMATS[chosen]
    for fmt in CHAT_FORMATS.values():
        if info.chat_template:
            found = fmt.marker in info.chat_template
        else:  # a base model without a template: the turn tokens in its vocabulary decide
            found = info.turn_tokens.issuperset((fmt.marker, *fmt.stops))
        if found:
            return fmt
    kind = "an unknown chat template" if info.chat_template else "no chat template"
    raise SlimkitError(f"{what} has {kind} (slimkit writes {', '.join(CHAT_FORMATS)}); "
                       "pass chat_format= (CLI: --chat-format) to choose the template")


def _default_system(info: GGUFInfo, fmt: ChatFormat, what: str) -> str:
    """The system prompt the GGUF's jinja template injects when none is given (SmolLM2 has one)."""
    if not info.chat_template or fmt.marker not in info.chat_template:
        return ""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    # The environment transformers renders chat templates in.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=time.strftime)
    try:
        rendered = env.from_string(info.chat_template).render(
            messages=[{"role": "user", "content": _SENTINEL}], add_generation_prompt=True,
            bos_token=info.bos or "", eos_token=info.eos or "", tools=None)
    except Exception as exc:  # any template failure: the user can still name the system prompt
        raise SlimkitError(f"cannot render the chat template of {what} ({exc}); "
                           "pass system= (CLI: --system) to set the system prompt") from None
    match = re.search(fmt.system_pattern, rendered.split(_SENTINEL, 1)[0], re.DOTALL)
    return match.group(1) if match else ""


def _go_printable(c: str) -> bool:
    """strconv.IsPrint; Ollama's parser silently drops other runes (tab and line ends aside)."""
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _quote(value: str, what: str, block: bool = False) -> str:
    """A value parser.go reads back unchanged: bare if it can be, else in triple quotes."""
    if bad := [c for c in value if not (_go_printable(c) or c in "\t\n")]:
        raise SlimkitError(f"{what} contains {bad[0]!r}, which Ollama's Modelfile parser drops; remove it")
    if not block and value and value == value.strip() and "\n" not in value and value[0] != '"':
        return value
    if '"""' in value:  # the parser has no escapes: this would end the value early
        raise SlimkitError(f'{what} contains """, which a Modelfile cannot quote; remove it')
    return f'"""{value}"""'


def _value(text: str, i: int) -> tuple[str, int]:
    """A value ends at the first line end where its quotes are balanced (parser.go stateValue)."""
    buf: list[str] = []
    for j in range(i, len(text) + 1):
        if j == len(text) or text[j] in "\r\n":
            s = "".join(buf).strip()
            q = '"""' if s.startswith('"""') else '"' if s.startswith('"') else ""
            if not q or (len(s) >= 2 * len(q) and s.endswith(q)):
                return s[len(q):len(s) - len(q)], j + 1
            if j == len(text):
                raise SlimkitError('the Modelfile ends inside a quoted value; close its quotes')
        if text[j] in "\r\n\t" or _go_printable(text[j]):
            buf.append(text[j])
    raise AssertionError("unreachable")


def _scan(text: str, i: int, pred: Callable[[str], bool]) -> int:
    while i < len(text) and text[i].isascii() and pred(text[i]):
        i += 1
    return i


def _syntax(text: str, i: int, msg: str) -> SlimkitError:
    return SlimkitError(f"Modelfile line {text.count(chr(10), 0, i) + 1}: {msg}")


def _cut(s: str, sep: str) -> tuple[str, str]:
    before, _, after = s.rpartition(sep)
    return before or _MISSING, after or _MISSING


def _alnum(c: int) -> bool:
    return c < 128 and (chr(c).isalnum() or chr(c) == "_")
