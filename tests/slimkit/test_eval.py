"""`slimkit eval`: one protocol for torch and llama.cpp, same tokens in, comparable numbers."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from compress.checkpoint import save  # noqa: E402
from compress.evaluate import make_windows  # noqa: E402
from export.gguf.writer import export_gguf  # noqa: E402
from slimkit.cli import main  # noqa: E402


def test_windows_protocol():
    w = make_windows(list(range(10)), ctx=4, bos_id=99)
    assert w == [[99, 1, 2, 3], [99, 5, 6, 7]]  # non-overlapping, BOS in the first slot, tail dropped
    assert make_windows(list(range(10)), ctx=4, max_chunks=1) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_torch_and_gguf_agree(tmp_path, capsys, family):
    from conftest import TINY, TRAIN_TEXT

    ckpt = TINY[family](seed=5)
    src = save(ckpt, tmp_path / "ckpt")
    art = tmp_path / "m.gguf"
    export_gguf(ckpt, art, "F32", validate=False)
    text = tmp_path / "t.txt"
    text.write_text(TRAIN_TEXT)
    results = {}
    for name, source in (("torch", src), ("gguf", art)):
        assert main(["eval", str(source), "--text", str(text), "--ctx", "64", "--max-chunks", "6", "--json"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    t, g = results["torch"], results["gguf"]
    assert (t["runtime"], g["runtime"]) == ("torch", "llama.cpp")
    assert t["tokens_scored"] == g["tokens_scored"] == 6 * 63
    # llama.cpp's default F16 KV cache is the only difference left
    assert g["ppl"] == pytest.approx(t["ppl"], rel=2e-3)
