"""Bad input at the CLI: one line on stderr, exit code 2, nothing half-written."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimkit.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("slimkit: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> Path:
    from conftest import tiny_llama
    from export.gguf.writer import export_gguf

    out = tmp_path_factory.mktemp("g") / "tiny.gguf"
    export_gguf(tiny_llama(), out, "F16", validate=False)
    return out


def test_missing_path(tmp_path, capsys):
    code, err = run_cli(["export", "gguf", str(tmp_path / "nope"), "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "no such file")
    assert not list(tmp_path.iterdir())


def test_dir_without_config(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    code, err = run_cli(["eval", str(tmp_path / "ckpt"), "--text", str(tmp_path / "ckpt" / "model.safetensors")], capsys)
    assert_one_line_error(code, err, "config.json")


def test_unsupported_architecture_dir(tmp_path, capsys):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert"}')
    code, err = run_cli(["export", "gguf", str(d), "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "unsupported architecture", "bert")
    assert not (tmp_path / "o.gguf").exists()


def test_unsupported_architecture_gguf(tmp_path, capsys):
    import gguf
    import numpy as np

    p = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(p, "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    code, err = run_cli(["export", "gguf", str(p), "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "unsupported architecture", "gpt2")


@pytest.mark.parametrize("seed", range(6))
def test_truncated_gguf(small_gguf, tmp_path, capsys, seed):
    data = small_gguf.read_bytes()
    cut = random.Random(seed).randrange(8, len(data) - 1)
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut])
    for argv in (["export", "gguf", str(bad), "-o", str(tmp_path / "o.gguf"), "--type", "F32"],
                 ["eval", str(bad), "--text", str(bad)]):
        code, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "not a valid GGUF")
    assert not (tmp_path / "o.gguf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf"]


@pytest.mark.parametrize("offset", [0, 1, 4, 5, 8, 12, 16, 20, 24, 30])
def test_flipped_header_bytes(small_gguf, tmp_path, capsys, offset):
    data = bytearray(small_gguf.read_bytes())
    data[offset] ^= 0xFF
    bad = tmp_path / "flip.gguf"
    bad.write_bytes(bytes(data))
    code, err = run_cli(["export", "gguf", str(bad), "-o", str(tmp_path / "o.gguf"), "--type", "F32"], capsys)
    assert code == 2, err
    assert_one_line_error(code, err)
    assert not (tmp_path / "o.gguf").exists()


def test_unwritable_output_dir(small_gguf, tmp_path, capsys):
    if os.geteuid() == 0:
        # root ignores permission bits: use a path whose parent is a file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "o.gguf"
        code, err = run_cli(["export", "gguf", str(small_gguf), "-o", str(out)], capsys)
        assert_one_line_error(code, err, "does not exist")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = run_cli(["export", "gguf", str(small_gguf), "-o", str(ro / "o.gguf")], capsys)
        if os.geteuid() != 0:
            assert_one_line_error(code, err, "not writable")
        assert not any(p.name.endswith("partial") for p in ro.iterdir())
    finally:
        ro.chmod(0o700)


def test_unknown_type(small_gguf, tmp_path, capsys):
    code, err = run_cli(["export", "gguf", str(small_gguf), "-o", str(tmp_path / "o.gguf"), "--type", "Q9_9"], capsys)
    assert_one_line_error(code, err, "unknown GGUF type")


def test_console_script_exit_code(tmp_path):
    """The installed entry point, as a user runs it: exit 2, no traceback."""
    exe = shutil.which("slimkit", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "slimkit.cli"]
    proc = subprocess.run(cmd + ["eval", str(tmp_path / "missing.gguf"), "--text", "x"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("damage", ["truncated_weights", "bad_config_json"])
def test_damaged_checkpoint_dir(tmp_path, capsys, damage, validate):
    from conftest import tiny_llama

    from compress.checkpoint import save

    d = save(tiny_llama(), tmp_path / "ckpt")
    capsys.readouterr()  # save()'s progress bar is not the CLI's output
    if damage == "truncated_weights":
        w = d / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    else:
        (d / "config.json").write_text("{bad")
    out = tmp_path / "o.gguf"
    code, err = run_cli(["export", "gguf", str(d), "-o", str(out)] + ([] if validate else ["--no-validate"]), capsys)
    assert_one_line_error(code, err, "truncated" if damage == "truncated_weights" else "not valid JSON")
    assert not out.exists() and not list(tmp_path.glob(".o.gguf*"))
