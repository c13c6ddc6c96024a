"""A GGUF whose vocabulary bytes are damaged (three bytes zeroed inside the token strings; the
header still parses) used to kill `slimkit eval` with SIGABRT inside llama.cpp. gguf_file.check
now refuses such vocabularies before llama.cpp sees them: one line, exit code 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def smollm2_gguf(tmp_path_factory):
    import gzip

    from conftest import zoo_path

    path = zoo_path("smollm2-135m-instruct")
    data = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text" / "tiny_shakespeare.txt.gz"
    text = tmp_path_factory.mktemp("vocab") / "text.txt"
    text.write_text(gzip.open(data, "rt").read()[:20000] if data.is_file() else "To be, or not to be. " * 400)
    return path, text


def token_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of every string of the tokenizer.ggml.tokens array in a GGUF file."""
    key = b"tokenizer.ggml.tokens"
    at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    vtype, etype, n = int.from_bytes(data[at:at + 4], "little"), int.from_bytes(data[at + 4:at + 8], "little"), \
        int.from_bytes(data[at + 8:at + 16], "little")
    assert (vtype, etype) == (9, 8), (vtype, etype)   # GGUF ARRAY of STRING
    at += 16
    out = []
    for _ in range(n):
        length = int.from_bytes(data[at:at + 8], "little")
        out.append((at + 8, length))
        at += 8 + length
    return out


def _damaged(src, dst, token_index: int) -> None:
    """Zero three bytes in the middle of token `token_index`'s string (at least 5 bytes long)."""
    data = bytearray(src.read_bytes())
    start, length = token_offsets(bytes(data))[token_index]
    assert length >= 5
    mid = start + length // 2 - 1
    data[mid:mid + 3] = b"\0\0\0"
    dst.write_bytes(bytes(data))


@pytest.mark.real
def test_damaged_vocabulary_is_a_one_line_error_not_an_abort(smollm2_gguf, tmp_path):
    """On SmolLM2 these three damaged tokens each made llama.cpp abort (SIGABRT, measured when this
    check was written): a BPE merge then produces a string that is no longer a token."""
    from compress.gguf_file import read_info

    path, text = smollm2_gguf
    tokens = read_info(path).metadata["tokenizer.ggml.tokens"]
    for i in (5000, 12000, 20000):
        bad = tmp_path / "bad.gguf"
        _damaged(path, bad, i)
        assert read_info(bad).metadata["tokenizer.ggml.tokens"][i] != tokens[i]   # the header still parses
        proc = subprocess.run([sys.executable, "-m", "slimkit.cli", "eval", str(bad), "--text", str(text),
                               "--ctx", "64", "--max-chunks", "2"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (i, proc.returncode, proc.stderr[-500:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a valid GGUF" in lines[0] and "BPE merge" in lines[0], (i, proc.stderr)
