"""export.ollama: Modelfile text, package directory, model store, `ollama create` hand-off.

Fixtures are tiny GGUFs written in-process with gguf.GGUFWriter. The Modelfile is read back by an
independent parser written from Ollama's documented grammar (docs/modelfile.md), and the TEMPLATE
is executed by a small interpreter of the Go-template subset Ollama documents (docs/template.md),
so the prompt Ollama would build can be compared with the GGUF's own jinja chat template.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from pathlib import Path

import gguf
import jinja2
import numpy as np
import pytest

from compress.errors import SlimkitError
from export import ollama, ollama_store

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2-Instruct's chat template: injects a default system turn when none is given.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOL_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Gemma 3's chat template (text content): the system prompt is prepended to the first user turn.
GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""
LLAMA3_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] }}<|eot_id|>{% endfor %}"
                   "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
VICUNA_TEMPLATE = "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}ASSISTANT:"
CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
             "{{ end }}<|im_start|>assistant\n")
CONTROL, NORMAL = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
LICENSE = "Apache License 2.0\n\n  Indented line with \"quotes\" and a trailing space "


def write_gguf(path: Path, arch: str, tokens: list[str], types: list[int], *, template: str | None,
               bos: int, eos: int, eot: int | None = None, ctx: int = 8192,
               ftype: gguf.LlamaFileType = gguf.LlamaFileType.MOSTLY_Q8_0) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(ctx)
    w.add_file_type(ftype)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    if eot is not None:
        w.add_eot_token_id(eot)
    if template is not None:
        w.add_chat_template(template)
    w.add_tensor("token_embd.weight", np.arange(len(tokens) * 4, dtype=np.float32).reshape(len(tokens), 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def smol_gguf(path: Path, template: str | None = SMOL_TEMPLATE) -> Path:
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "hello", "world"]
    return write_gguf(path, "llama", tokens, [CONTROL] * 3 + [NORMAL] * 2, template=template, bos=1, eos=2)


def gemma_gguf(path: Path, template: str | None = GEMMA_TEMPLATE) -> Path:
    tokens = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "hi"]
    return write_gguf(path, "gemma3", tokens, [CONTROL] * 5 + [NORMAL], template=template, bos=2, eos=1,
                      eot=4, ctx=2048, ftype=gguf.LlamaFileType.MOSTLY_Q4_K_M)


@pytest.fixture
def smol(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return smol_gguf(tmp_path / "src" / "smol.gguf")


@pytest.fixture
def gemma(tmp_path: Path) -> Path:
    (tmp_path / "gsrc").mkdir()
    return gemma_gguf(tmp_path / "gsrc" / "gemma.gguf")


# -- an independent Modelfile reader, from docs/modelfile.md -------------------------------------

def read_modelfile(text: str) -> list[tuple[str, str]]:
    """`# comment` / `INSTRUCTION arguments`; instructions are case-insensitive; PARAMETER and
    MESSAGE take a key first; a value may be in "..." or in \"\"\"...\"\"\" spanning lines."""
    out, lines = [], iter(text.split("\n"))
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instr, rest = re.match(r"\s*([A-Za-z]+)[ \t]+(.*)$", line).groups()
        instr = instr.upper()
        assert instr in {"FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES"}
        if instr in ("PARAMETER", "MESSAGE"):
            key, rest = re.match(r"(\w+)[ \t]+(.*)$", rest).groups()
            instr = f"{instr} {key}"
        rest = rest.strip()
        if rest.startswith('"""'):
            while len(rest) < 6 or not rest.rstrip().endswith('"""'):
                rest += "\n" + next(lines)
            rest = rest.rstrip()[3:-3]
        elif rest.startswith('"'):
            assert rest.endswith('"') and len(rest) >= 2
            rest = rest[1:-1]
        out.append((instr, rest))
    return out


# -- the Go-template subset Ollama documents (range, if/else, eq, variables, fields) -------------

GO_FIELDS = {"System", "Prompt", "Response", "Messages", "Role", "Content"}


def go_render(template: str, messages: list[dict[str, str]]) -> str:
    """Execute TEMPLATE the way Ollama's Template.Execute does for chat (messages mode): .System
    is every system message joined by blank lines, .Messages keeps them all (Role, Content)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    root = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    toks: list[list[str]] = []
    pos, trim_next = 0, False
    for m in re.finditer(r"\{\{(- )?(.*?)( -)?\}\}", template, re.S):
        text = template[pos:m.start()]
        text = text.lstrip(" \t\r\n") if trim_next else text
        toks += [["text", text.rstrip(" \t\r\n") if m.group(1) else text], ["act", m.group(2).strip()]]
        pos, trim_next = m.end(), bool(m.group(3))
    toks.append(["text", template[pos:].lstrip(" \t\r\n") if trim_next else template[pos:]])
    nodes, _, end = _go_parse(toks, 0)
    assert end is None
    out: list[str] = []
    _go_exec(nodes, root, [{"$": root}], out)
    return "".join(out)


def _go_parse(toks: list[list[str]], i: int) -> tuple[list, int, str | None]:
    nodes: list = []
    while i < len(toks):
        kind, val = toks[i]
        i += 1
        if kind == "text":
            nodes.append(("text", val))
        elif val in ("end", "else") or val.startswith("else if "):
            return nodes, i, val
        elif val.startswith("range "):
            body, i, end = _go_parse(toks, i)
            assert end == "end"
            nodes.append(("range", val[6:], body))
        elif val.startswith("if "):
            branches, cond = [], val[3:]
            while True:
                body, i, end = _go_parse(toks, i)
                branches.append((cond, body))
                if end == "end":
                    break
                cond = "true" if end == "else" else end[8:]
            nodes.append(("if", branches))
        elif m := re.fullmatch(r"(\$\w+) (:?=) (.+)", val):
            nodes.append(("set", m[1], m[2], m[3]))
        else:
            nodes.append(("out", val))
    return nodes, i, None


def _go_eval(expr: str, dot: dict, scopes: list[dict]) -> object:
    args = re.findall(r'"[^"]*"|\S+', expr)
    if args[0] == "eq":
        return _go_atom(args[1], dot, scopes) == _go_atom(args[2], dot, scopes)
    assert len(args) == 1, f"Go-template construct outside Ollama's documented set: {expr!r}"
    return _go_atom(args[0], dot, scopes)


def _go_atom(tok: str, dot: dict, scopes: list[dict]) -> object:
    if tok == "true":
        return True
    if tok.startswith('"'):
        return json.loads(tok)
    if tok.startswith("$."):
        obj, field = scopes[0]["$"], tok[2:]
    elif tok.startswith("$"):
        return next(s[tok] for s in reversed(scopes) if tok in s)
    else:
        assert tok.startswith("."), f"unexpected token {tok!r}"
        obj, field = dot, tok[1:]
    assert field in GO_FIELDS, f"field {field!r} is not one Ollama documents"
    return obj[field]


def _go_exec(nodes: list, dot: dict, scopes: list[dict], out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_go_eval(node[1], dot, scopes)))
        elif node[0] == "set":
            _, var, op, expr = node
            value = _go_eval(expr, dot, scopes)
            scope = scopes[-1] if op == ":=" else next(s for s in reversed(scopes) if var in s)
            scope[var] = value
        elif node[0] == "range":
            for item in _go_eval(node[1], dot, scopes):
                _go_exec(node[2], item, scopes + [{}], out)
        else:
            for cond, body in node[1]:
                if _go_eval(cond, dot, scopes):
                    _go_exec(body, dot, scopes + [{}], out)
                    break


def jinja_render(template: str, messages: list[dict[str, str]], bos: str = "") -> str:
    def raise_exception(msg: str) -> None:
        raise jinja2.TemplateError(msg)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 2+2?"}]


# -- Modelfile -----------------------------------------------------------------------------------

def test_chatml_modelfile_parses_to_exact_commands(smol: Path) -> None:
    text = ollama.modelfile_for(smol, license_text=LICENSE)
    expected = [("FROM", "./smol.gguf"), ("TEMPLATE", CHATML_GO), ("SYSTEM", SMOL_SYSTEM),
                ("PARAMETER stop", "<|im_start|>"), ("PARAMETER stop", "<|im_end|>"),
                ("PARAMETER num_ctx", "4096"), ("LICENSE", LICENSE)]
    assert read_modelfile(text) == expected
    # slimkit's own reader (a port of parser.go's state machine) agrees, lower-cased names and all
    assert [(n, a) for n, a in ollama.parse_modelfile(text)] == [
        ("model", "./smol.gguf"), ("template", CHATML_GO), ("system", SMOL_SYSTEM), ("stop", "<|im_start|>"),
        ("stop", "<|im_end|>"), ("num_ctx", "4096"), ("license", LICENSE)]


def test_instructions_are_case_insensitive_in_both_readers(smol: Path) -> None:
    text = ollama.modelfile_for(smol).replace("FROM ", "from ").replace("PARAMETER ", "Parameter ")
    assert ("FROM", "./smol.gguf") in read_modelfile(text)
    assert ("model", "./smol.gguf") in ollama.parse_modelfile(text)


def test_gemma_modelfile(gemma: Path) -> None:
    cmds = read_modelfile(ollama.modelfile_for(gemma, num_ctx=1024, system="Answer in French."))
    assert cmds[0] == ("FROM", "./gemma.gguf")
    assert [v for k, v in cmds if k == "PARAMETER stop"] == ["<end_of_turn>", "<eos>"]
    assert ("PARAMETER num_ctx", "1024") in cmds and ("SYSTEM", "Answer in French.") in cmds
    assert not any(k == "LICENSE" for k, _ in cmds)


def test_default_num_ctx_is_capped_context_length(smol: Path, gemma: Path) -> None:
    assert ("PARAMETER num_ctx", "4096") in read_modelfile(ollama.modelfile_for(smol))  # 8192 -> cap
    assert ("PARAMETER num_ctx", "2048") in read_modelfile(ollama.modelfile_for(gemma))  # below cap
    with pytest.raises(SlimkitError, match="num_ctx"):
        ollama.modelfile_for(smol, num_ctx=0)


def test_gemma_template_has_no_default_system(gemma: Path) -> None:
    assert not any(k == "SYSTEM" for k, _ in read_modelfile(ollama.modelfile_for(gemma)))


def test_system_can_be_replaced_or_dropped(smol: Path) -> None:
    assert ("SYSTEM", "Be terse.") in read_modelfile(ollama.modelfile_for(smol, system="Be terse."))
    assert not any(k == "SYSTEM" for k, _ in read_modelfile(ollama.modelfile_for(smol, system="")))


@pytest.mark.parametrize("value", ['"starts with a quote', " leading space", "trailing space ",
                                   'two\nlines "quoted"', '"fully quoted"', "tab\there", 'ends "'])
def test_quoting_round_trips(smol: Path, value: str) -> None:
    text = ollama.modelfile_for(smol, system=value, license_text=value)
    assert ("SYSTEM", value) in read_modelfile(text)
    assert ("system", value) in ollama.parse_modelfile(text)
    assert ("license", value) in ollama.parse_modelfile(text)


@pytest.mark.parametrize("bad", ['has """ inside', "bell\x07", "zero\u200bwidth"])
def test_unquotable_values_are_refused(smol: Path, bad: str) -> None:
    with pytest.raises(SlimkitError, match="system prompt"):
        ollama.modelfile_for(smol, system=bad)


def test_chatml_template_renders_like_the_gguf_template(smol: Path) -> None:
    cmds = dict(read_modelfile(ollama.modelfile_for(smol)))
    assert go_render(cmds["TEMPLATE"], CHAT) == jinja_render(SMOL_TEMPLATE, CHAT)
    # no system message in the request: Ollama prepends SYSTEM, the jinja template injects its own
    user = [{"role": "user", "content": "Hi"}]
    assert go_render(cmds["TEMPLATE"], [{"role": "system", "content": cmds["SYSTEM"]}, *user]) == \
        jinja_render(SMOL_TEMPLATE, user)


def test_gemma_template_renders_like_the_gguf_template(gemma: Path) -> None:
    template = dict(read_modelfile(ollama.modelfile_for(gemma)))["TEMPLATE"]
    for chat in (CHAT, CHAT[1:], CHAT[1:2]):
        assert go_render(template, chat) == jinja_render(GEMMA_TEMPLATE, chat, "<bos>").removeprefix("<bos>")
    assert go_render(template, CHAT).startswith("<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n")


def test_templates_use_only_documented_constructs() -> None:
    for fmt in ollama.CHAT_FORMATS.values():
        for action in re.findall(r"\{\{-? ?(.*?) ?-?\}\}", fmt.template, re.S):
            words = re.findall(r'"[^"]*"|\S+', action)
            assert words[0] in {"range", "if", "else", "end", "eq"} or words[0][0] in ".$", action
            fields = {w.lstrip("$").lstrip(".") for w in words if w.startswith((".", "$."))}
            assert fields <= GO_FIELDS, action
        assert ".Messages" in fmt.template and ".Content" in fmt.template


def test_llama3_template_renders_like_the_gguf_template(tmp_path: Path) -> None:
    llama3 = smol_gguf(tmp_path / "llama3.gguf", LLAMA3_TEMPLATE)
    cmds = dict(read_modelfile(ollama.modelfile_for(llama3)))
    assert "llama3" in ollama.modelfile_for(llama3).splitlines()[0]
    assert go_render(cmds["TEMPLATE"], CHAT) == jinja_render(LLAMA3_TEMPLATE, CHAT)


def test_unknown_or_missing_chat_template(tmp_path: Path) -> None:
    vicuna = smol_gguf(tmp_path / "vicuna.gguf", VICUNA_TEMPLATE)
    with pytest.raises(SlimkitError, match="unknown chat template.*chat_format"):
        ollama.modelfile_for(vicuna)
    assert "<|im_start|>" in ollama.modelfile_for(vicuna, chat_format="chatml")
    with pytest.raises(SlimkitError, match="unknown chat format"):
        ollama.modelfile_for(vicuna, chat_format="vicuna")
    # a base model without a template: its vocabulary's turn tokens decide
    assert "<start_of_turn>" in ollama.modelfile_for(gemma_gguf(tmp_path / "base.gguf", None))
    no_turns = write_gguf(tmp_path / "plain.gguf", "llama", ["<s>", "</s>", "a"], [CONTROL, CONTROL, NORMAL],
                          template=None, bos=0, eos=1)
    with pytest.raises(SlimkitError, match="no chat template"):
        ollama.modelfile_for(no_turns)


def test_broken_gguf_is_a_slimkit_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(SlimkitError, match="GGUF"):
        ollama.modelfile_for(bad)


# -- names ---------------------------------------------------------------------------------------

# Cases from types/model/name_test.go (valid once ParseName fills in the default parts).
@pytest.mark.parametrize("name, parts", [
    ("smol", ("registry.ollama.ai", "library", "smol", "latest")),
    ("h/nn/mm:t", ("h", "nn", "mm", "t")),
    ("_why/_the/_lucky:_stiff", ("_why", "_the", "_lucky", "_stiff")),
    ("scheme://host:port/namespace/model:tag", ("host:port", "namespace", "model", "tag")),
    ("3" * 350 + "/" + "8" * 80 + "/" + "8" * 80 + ":" + "8" * 80, ("3" * 350, "8" * 80, "8" * 80, "8" * 80)),
    ("smol:q8_0", ("registry.ollama.ai", "library", "smol", "q8_0")),
    ("me/smol-2.0:v1.1", ("registry.ollama.ai", "me", "smol-2.0", "v1.1")),
    ("example.com:5000/team/smol:x", ("example.com:5000", "team", "smol", "x")),
    ("_under", ("registry.ollama.ai", "library", "_under", "latest"))])
def test_valid_names(name: str, parts: tuple[str, ...]) -> None:
    assert ollama.parse_name(name) == parts


@pytest.mark.parametrize("name", ["", "bad name", "bad!", ":tag", "smol:", "-lead", ".dot", "a" * 81,
                                  "smol:" + "t" * 81, "name.space/smol", "smol:ta/g", "/smol", "émoji",
                                  "n/m:", "m@d", "//mm", "hh//", "hh/nn/mm:-tt", "host/name:space/model:tag",
                                  "3" * 351 + "/n/m:t"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(SlimkitError, match="invalid Ollama model name"):
        ollama.parse_name(name)


# -- package directory ---------------------------------------------------------------------------

def test_write_package_links_gguf_beside_modelfile(smol: Path, tmp_path: Path) -> None:
    modelfile = ollama.write_package(smol, "smol", tmp_path / "out" / "pkg", license_text="MIT")
    pkg = tmp_path / "out" / "pkg"
    assert modelfile == pkg / "Modelfile"
    assert sorted(p.name for p in pkg.iterdir()) == ["Modelfile", "smol.gguf"]
    assert os.stat(pkg / "smol.gguf").st_ino == os.stat(smol).st_ino  # hard link, same filesystem
    cmds = read_modelfile(modelfile.read_text())
    assert cmds[0] == ("FROM", "./smol.gguf") and (pkg / cmds[0][1]).is_file()
    assert ollama.write_package(smol, "smol", pkg) == modelfile  # again: replaced in place


def test_write_package_copies_across_filesystems(smol: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(ollama.os, "link", no_link)
    ollama.write_package(smol, "smol", tmp_path / "pkg")
    copy = tmp_path / "pkg" / "smol.gguf"
    assert copy.read_bytes() == smol.read_bytes() and os.stat(copy).st_ino != os.stat(smol).st_ino
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o644


def test_write_package_invalid_name_leaves_nothing(smol: Path, tmp_path: Path) -> None:
    with pytest.raises(SlimkitError, match="invalid Ollama model name"):
        ollama.write_package(smol, "not valid!", tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_write_package_unwritable_dir(smol: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SlimkitError, match="writable"):
        ollama.write_package(smol, "smol", blocker / "pkg")
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "src"]


def test_write_package_failure_midway_leaves_nothing(smol: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def failing_replace(src: str, dst: object) -> None:
        if str(dst).endswith("Modelfile"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)
    monkeypatch.setattr(ollama.os, "replace", failing_replace)
    with pytest.raises(SlimkitError, match="No space left"):
        ollama.write_package(smol, "smol", tmp_path / "new" / "pkg")
    assert not (tmp_path / "new").exists()


# -- model store ---------------------------------------------------------------------------------

def blob(models: Path, digest: str) -> bytes:
    return (models / "blobs" / digest.replace(":", "-")).read_bytes()


def store_files(models: Path) -> dict[str, bytes]:
    return {str(p.relative_to(models)): p.read_bytes() for p in sorted(models.rglob("*")) if p.is_file()}


def test_install_writes_store_like_ollama_create(smol: Path, tmp_path: Path) -> None:
    pkg, models = tmp_path / "pkg", tmp_path / "models"
    ollama.write_package(smol, "smol:q8", pkg, license_text=LICENSE)
    assert "installed smol:q8" in ollama.install(pkg, "smol:q8", models_dir=models)
    raw = (models / "manifests/registry.ollama.ai/library/smol/q8").read_bytes()
    manifest = json.loads(raw)
    assert raw.endswith(b"\n") and b" " not in raw  # json.Encoder: compact, newline-terminated
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers"]
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    media = [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]]
    assert media == ["model", "template", "system", "license", "params"]
    for layer in [manifest["config"], *manifest["layers"]]:
        assert list(layer) == ["mediaType", "digest", "size"]
        data = blob(models, layer["digest"])
        assert layer["digest"] == "sha256:" + hashlib.sha256(data).hexdigest() and layer["size"] == len(data)
    by_type = {layer["mediaType"]: blob(models, layer["digest"]) for layer in manifest["layers"]}
    cmds = dict(read_modelfile((pkg / "Modelfile").read_text()))
    assert by_type["application/vnd.ollama.image.model"] == smol.read_bytes()
    assert by_type["application/vnd.ollama.image.template"].decode() == cmds["TEMPLATE"]
    assert by_type["application/vnd.ollama.image.system"].decode() == SMOL_SYSTEM
    assert by_type["application/vnd.ollama.image.license"].decode() == LICENSE
    params = by_type["application/vnd.ollama.image.params"]
    assert params == b'{"num_ctx":4096,"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"]}\n'
    assert json.loads(params) == {"num_ctx": 4096, "stop": ["<|im_start|>", "<|im_end|>"]}
    config = json.loads(blob(models, manifest["config"]["digest"]))
    assert config == {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                      "model_type": "20", "file_type": "Q8_0", "architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [la["digest"] for la in manifest["layers"]]}}
    assert list(config) == ["model_format", "model_family", "model_families", "model_type", "file_type",
                            "architecture", "os", "rootfs"]  # model.ConfigV2 field order
    names = {p.name for p in (models / "blobs").iterdir()}
    assert all(re.fullmatch(r"sha256-[0-9a-f]{64}", n) for n in names) and len(names) == 6


def test_install_gemma_config(gemma: Path, tmp_path: Path) -> None:
    ollama.write_package(gemma, "gem", tmp_path / "pkg")
    ollama.install(tmp_path / "pkg", "gem", models_dir=tmp_path / "m")
    manifest = json.loads((tmp_path / "m/manifests/registry.ollama.ai/library/gem/latest").read_text())
    config = json.loads(blob(tmp_path / "m", manifest["config"]["digest"]))
    assert (config["model_family"], config["file_type"], config["model_type"]) == ("gemma3", "Q4_K_M", "24")
    media = [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]]
    assert media == ["model", "template", "params"]  # no default system prompt, no license


def test_reinstall_is_idempotent_and_prunes_replaced_blobs(smol: Path, tmp_path: Path) -> None:
    pkg, models = tmp_path / "pkg", tmp_path / "models"
    ollama.write_package(smol, "smol", pkg, license_text="license A")
    ollama.install(pkg, "smol", models_dir=models)
    before = store_files(models)
    assert "0 new blobs" in ollama.install(pkg, "smol", models_dir=models)
    assert store_files(models) == before
    ollama.write_package(smol, "smol", pkg, license_text="license B")
    ollama.install(pkg, "smol", models_dir=models)
    manifest = json.loads((models / "manifests/registry.ollama.ai/library/smol/latest").read_text())
    live = {d["digest"].replace(":", "-") for d in [manifest["config"], *manifest["layers"]]}
    assert {p.name for p in (models / "blobs").iterdir()} == live  # license A's blob is gone
    assert b"license B" in [blob(models, la["digest"]) for la in manifest["layers"]]


def test_corrupt_blob_is_rewritten(smol: Path, tmp_path: Path) -> None:
    pkg, models = tmp_path / "pkg", tmp_path / "models"
    ollama.write_package(smol, "smol", pkg)
    ollama.install(pkg, "smol", models_dir=models)
    model_blob = models / "blobs" / ("sha256-" + hashlib.sha256(smol.read_bytes()).hexdigest())
    model_blob.write_bytes(b"\0" * model_blob.stat().st_size)
    assert "1 new blobs" in ollama.install(pkg, "smol", models_dir=models)
    assert model_blob.read_bytes() == smol.read_bytes()


def test_install_edited_modelfile_parameters(smol: Path, tmp_path: Path) -> None:
    pkg, models = tmp_path / "pkg", tmp_path / "models"
    modelfile = ollama.write_package(smol, "smol", pkg)
    modelfile.write_text(modelfile.read_text() + "parameter temperature 0.7\nPARAMETER top_k 40\n"
                         "PARAMETER use_mmap false\nPARAMETER mirostat 1\n")
    ollama.install(pkg, "smol", models_dir=models)
    manifest = json.loads((models / "manifests/registry.ollama.ai/library/smol/latest").read_text())
    params = blob(models, manifest["layers"][-1]["digest"])
    assert params.startswith(b'{"num_ctx":4096,"stop":[') and params.endswith(
        b'],"temperature":0.7,"top_k":40,"use_mmap":false}\n')  # float32 0.7, sorted map keys
    modelfile.write_text(modelfile.read_text() + "PARAMETER nonsense 1\n")
    with pytest.raises(SlimkitError, match="unknown parameter"):
        ollama.install(pkg, "smol", models_dir=models)


def test_install_errors_leave_nothing(smol: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    ollama.write_package(smol, "smol", pkg)
    with pytest.raises(SlimkitError, match="invalid Ollama model name"):
        ollama.install(pkg, "Bad Name", models_dir=tmp_path / "models")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SlimkitError, match="writable"):
        ollama.install(pkg, "smol", models_dir=blocker / "models")
    with pytest.raises(SlimkitError, match="no Modelfile"):
        ollama.install(tmp_path / "nowhere", "smol", models_dir=tmp_path / "models")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "pkg", "src"]


def test_install_uses_ollama_models_env_without_ollama(smol: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "emptybin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "emptybin"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "envmodels"))
    ollama.write_package(smol, "smol", tmp_path / "pkg")
    ollama.install(tmp_path / "pkg", "smol")
    assert (tmp_path / "envmodels/manifests/registry.ollama.ai/library/smol/latest").is_file()


# -- `ollama create` -----------------------------------------------------------------------------

def fake_ollama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rc: int = 0) -> Path:
    bindir, log = tmp_path / "bin", tmp_path / "argv.log"
    bindir.mkdir()
    exe = bindir / "ollama"
    exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{log}"\necho "Error: could not connect" >&2\n'
                   f"exit {rc}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def test_install_runs_ollama_create_when_on_path(smol: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_ollama(tmp_path, monkeypatch)
    modelfile = ollama.write_package(smol, "smol:q8", tmp_path / "pkg")
    assert "ollama create smol:q8" in ollama.install(tmp_path / "pkg", "smol:q8")
    assert log.read_text().splitlines() == ["create", "smol:q8", "-f", str(modelfile.resolve())]


def test_models_dir_bypasses_ollama(smol: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_ollama(tmp_path, monkeypatch)
    ollama.write_package(smol, "smol", tmp_path / "pkg")
    ollama.install(tmp_path / "pkg", "smol", models_dir=tmp_path / "models")
    assert not log.exists() and (tmp_path / "models/manifests").is_dir()


def test_failed_ollama_create_is_a_slimkit_error(smol: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ollama(tmp_path, monkeypatch, rc=1)
    ollama.write_package(smol, "smol", tmp_path / "pkg")
    with pytest.raises(SlimkitError, match="could not connect.*ollama serve"):
        ollama.install(tmp_path / "pkg", "smol")


@pytest.mark.parametrize("n, text", [(20, "20"), (1500, "2K"), (134_515_008, "134.52M"),
                                     (135_000_000, "135M"), (268_098_176, "268.10M"),
                                     (1_500_000_000, "1.5B"), (7_000_000_000, "7B")])
def test_parameter_size_like_ollama(n: int, text: str) -> None:
    assert ollama_store._human_number(n) == text


def test_json_bytes_match_go_encoder() -> None:
    """Golden bytes printed by Go 1.19 encoding/json.Encoder for the same values (map keys sorted
    by Go; <, >, & and U+2028 escaped; float32 in shortest form; trailing newline)."""
    f32 = np.float32
    params = {"min_p": f32("1e-7"), "num_ctx": 4096, "repeat_penalty": f32("1.1"), "seed": -3,
              "stop": ["<|im_start|>", "<end_of_turn>", "a&b\u2028"], "temperature": f32("0.7"),
              "top_p": f32("0.9"), "use_mmap": True}
    assert ollama_store._go_json(params) == (
        b'{"min_p":1e-7,"num_ctx":4096,"repeat_penalty":1.1,"seed":-3,"stop":["\\u003c|im_start|\\u003e",'
        b'"\\u003cend_of_turn\\u003e","a\\u0026b\\u2028"],"temperature":0.7,"top_p":0.9,"use_mmap":true}\n')
    assert ollama_store._go_json('You are <b>"helpful"</b>\n\ttab \x01') == \
        b'"You are \\u003cb\\u003e\\"helpful\\"\\u003c/b\\u003e\\n\\ttab \\u0001"\n'


@pytest.mark.real
def test_real_smollm2_modelfile() -> None:
    """The bundled SmolLM2 GGUF (zoo extra): its template gives ChatML and the SmolLM system prompt."""
    from compress import zoo

    try:
        path = zoo.get("smollm2-135m-instruct").path()
    except (SlimkitError, OSError) as exc:
        pytest.skip(f"bundled SmolLM2 not installed: {exc}")
    cmds = read_modelfile(ollama.modelfile_for(path))
    assert dict(cmds)["SYSTEM"] == SMOL_SYSTEM and ("PARAMETER stop", "<|im_end|>") in cmds
    info = ollama.read_gguf(path)
    assert go_render(dict(cmds)["TEMPLATE"], CHAT) == jinja_render(info.chat_template, CHAT)
    assert (info.file_type, ollama_store._human_number(info.parameter_count)) == ("Q4_1", "134.52M")
