"""export.probe: a GGUF (or ONNX export) is first opened in a short child process, so that a runtime
that aborts on it gives slimkit's one-line error instead of ending the user's process.

The real abort: a tiny GGUF whose blk.0.attn_norm.weight is marked I32 instead of F32 (same size,
so every offset and extent still checks out). llama.cpp loads it and aborts in the first decode
(ggml-cpu binary_op: unsupported types: dst f32, src0 f32, src1 i32), measured with
llama-cpp-python 0.3.36; marking a matmul weight I32 instead crashes it with SIGSEGV."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from compress import gguf_file  # noqa: E402
from compress.errors import SlimkitError  # noqa: E402
from export import probe  # noqa: E402

GGML_TYPE_I32 = 26  # gguf.GGMLQuantizationType.I32: 4 bytes an element, like F32
ONE_LINE = r"[^\n]*"


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory) -> Path:
    from conftest import tiny_gguf_file, tiny_llama

    return tiny_gguf_file(tmp_path_factory, tiny_llama(0), "F32", "tiny.gguf")


@pytest.fixture(autouse=True)
def fresh_verdicts(tmp_path, monkeypatch):
    """A private probe cache and no verdicts remembered from other tests."""
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SLIMKIT_NO_PROBE", raising=False)
    monkeypatch.setattr(probe, "_verdicts", {})


@pytest.fixture
def spawns(monkeypatch) -> list[Path]:
    """The paths of the children that probe really starts (the real run_child, counted)."""
    started: list[Path] = []
    real = probe.run_child

    def counted(path, *args, **kwargs):
        started.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(probe, "run_child", counted)
    return started


def with_tensor_type(src: Path, dst: Path, tensor: str, ggml_type: int) -> Path:
    """Copy src with one tensor's type field rewritten (the u32 after its name, n_dims and dims)."""
    data = bytearray(src.read_bytes())
    name = tensor.encode()
    at = bytes(data).index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, at)
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, ggml_type)
    dst.write_bytes(bytes(data))
    return dst


def test_a_real_abort_past_the_checks_is_a_one_line_error(tiny_f32, tmp_path):
    bad = with_tensor_type(tiny_f32, tmp_path / "bad.gguf", "blk.0.attn_norm.weight", GGML_TYPE_I32)
    with pytest.raises(SlimkitError, match=rf"^llama.cpp aborted \(SIGABRT\) while running {bad}: binary_op: "
                                           rf"unsupported types{ONE_LINE}download or export it again$"):
        probe.probe_gguf(bad)
    segv = with_tensor_type(tiny_f32, tmp_path / "segv.gguf", "blk.0.attn_q.weight", GGML_TYPE_I32)
    with pytest.raises(SlimkitError, match=rf"^llama.cpp crashed \(SIGSEGV\) while running {segv}{ONE_LINE}$"):
        probe.probe_gguf(segv)


def test_the_cli_survives_the_abort_exit_2_one_line(tiny_f32, tmp_path):
    from conftest import TRAIN_TEXT

    bad = with_tensor_type(tiny_f32, tmp_path / "bad.gguf", "blk.0.attn_norm.weight", GGML_TYPE_I32)
    text = tmp_path / "text.txt"
    text.write_text(TRAIN_TEXT)
    env = {**os.environ, "SLIMKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli", "eval", str(bad), "--text", str(text), "--ctx", "32",
                           "--max-chunks", "1"], capture_output=True, text=True, timeout=300, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-800:])
    # gguf_file.check may one day refuse the I32 norm itself; either way: one line naming the file
    assert lines[0].startswith(f"slimkit: error: llama.cpp aborted (SIGABRT) while running {bad}") or \
        lines[0].startswith(f"slimkit: error: {bad} is not a valid GGUF"), lines[0]


def with_u32(src: Path, dst: Path, key: str, value: int) -> Path:
    """Copy src with the u32 metadata value of `key` rewritten."""
    data = src.read_bytes()
    at = data.index(struct.pack("<Q", len(key)) + key.encode()) + 8 + len(key)
    assert struct.unpack_from("<I", data, at)[0] == 4   # GGUFValueType.UINT32
    dst.write_bytes(data[:at + 4] + struct.pack("<I", value) + data[at + 8:])
    return dst


def test_an_error_in_the_child_reads_as_the_in_process_one(tiny_f32, tmp_path, monkeypatch):
    """One block more than there are tensors: llama.cpp refuses the file without aborting."""
    bad = with_u32(tiny_f32, tmp_path / "three-blocks.gguf", "llama.block_count", 3)
    gguf_file.check(bad)
    with pytest.raises(SlimkitError) as in_child:
        probe.probe_gguf(bad)
    monkeypatch.setenv("SLIMKIT_NO_PROBE", "1")
    from export.runtime import LlamaRunner

    with pytest.raises(SlimkitError) as in_process:
        LlamaRunner(bad, n_ctx=64, threads=1)
    assert str(in_child.value) == str(in_process.value)
    assert str(in_child.value).startswith(f"llama.cpp could not load {bad}")


def test_the_mechanism_on_injected_children(tiny_f32, spawns):
    """Children that really abort, sleep and allocate (not mocked results)."""
    with pytest.raises(SlimkitError, match=rf"^llama.cpp aborted \(SIGABRT\) while starting to load {tiny_f32}"):
        probe.probe(tiny_f32, "llama.cpp", "import os; os.abort()")
    t0 = time.perf_counter()
    with pytest.raises(SlimkitError, match=rf"did not finish loading {tiny_f32} within 1 s{ONE_LINE}SLIMKIT_NO_PROBE"):
        probe.probe(tiny_f32, "test", "stage('loading')\nimport time; time.sleep(60)", timeout_s=1)
    assert time.perf_counter() - t0 < 30
    with pytest.raises(SlimkitError, match=rf"ran out of memory while starting to load {tiny_f32} \(over the "
                                           r"probe's cap of 1.0 GiB: MemoryError"):
        probe.probe(tiny_f32, "test-memory", "x = bytearray(4 << 30)", mem_bytes=1 << 30)
    with pytest.raises(SlimkitError, match=r"ran out of memory while loading .* cap of 1.0 GiB: MemoryError"):
        runner_child = probe.RUNNER_CHILD.format(open="    x = bytearray(4 << 30)", run="    pass")
        probe.probe(tiny_f32, "test-memory", runner_child, mem_bytes=1 << 30)   # caught there: still memory
    with pytest.raises(SlimkitError, match=r"did not finish"):   # a timeout is not remembered: tried again
        probe.probe(tiny_f32, "test", "import time; time.sleep(60)", timeout_s=1)
    with pytest.raises(SlimkitError, match=r"aborted"):   # an abort is remembered: no child
        probe.probe(tiny_f32, "llama.cpp", "import os; os.abort()")
    assert len(spawns) == 5


def test_a_healthy_file_loads_and_is_probed_once_per_header(tiny_f32, tmp_path, spawns, monkeypatch):
    from export.runtime import LlamaRunner

    path = tmp_path / "m.gguf"
    path.write_bytes(tiny_f32.read_bytes())
    t0 = time.perf_counter()
    probe.probe_gguf(path)
    cost = time.perf_counter() - t0
    assert cost < 20, f"probing a 0.4 MB GGUF took {cost:.1f} s"
    runner = LlamaRunner(path, n_ctx=64, threads=1)
    assert runner.logits(runner.tokenize("Hello, world")[:4]).shape[1] == 400
    runner.close()
    assert spawns == [path]
    monkeypatch.setattr(probe, "_verdicts", {})   # a new process: the verdict comes from the cache on disk
    LlamaRunner(path, n_ctx=64, threads=1).close()
    assert spawns == [path] and (tmp_path / "cache" / "probe.json").is_file()
    copy = tmp_path / "renamed.gguf"   # same header, same size: the same verdict
    copy.write_bytes(path.read_bytes()[:-4] + struct.pack("<f", 0.5))   # ... whatever the weights
    probe.probe_gguf(copy)
    assert spawns == [path]
    with_u32(path, path, "llama.context_length", 256)   # a rewritten header: probed again
    probe.probe_gguf(path)
    assert spawns == [path, path]
    monkeypatch.setenv("SLIMKIT_NO_PROBE", "1")
    with_u32(path, path, "llama.context_length", 128)
    probe.probe_gguf(path)
    assert spawns == [path, path]


def test_a_damaged_file_is_remembered_across_processes(tiny_f32, tmp_path, spawns, monkeypatch):
    bad = with_tensor_type(tiny_f32, tmp_path / "bad.gguf", "blk.0.attn_norm.weight", GGML_TYPE_I32)
    with pytest.raises(SlimkitError, match="SIGABRT") as first:
        probe.probe_gguf(bad)
    monkeypatch.setattr(probe, "_verdicts", {})
    with pytest.raises(SlimkitError) as again:
        probe.probe_gguf(bad)
    assert str(again.value) == str(first.value) and spawns == [bad]
    copy = tmp_path / "copy.gguf"   # the same header elsewhere: the same verdict, naming this file
    copy.write_bytes(bad.read_bytes())
    with pytest.raises(SlimkitError) as elsewhere:
        probe.probe_gguf(copy)
    assert str(elsewhere.value) == str(first.value).replace(str(bad), str(copy)) and spawns == [bad]


@pytest.mark.real
def test_probe_cost_on_smollm2(spawns):
    from conftest import zoo_path

    path = zoo_path("smollm2-135m-instruct")
    t0 = time.perf_counter()
    probe.probe_gguf(path)
    cost = time.perf_counter() - t0
    print(f"probe of {path.name} ({path.stat().st_size / 1e6:.0f} MB): {cost:.2f} s")
    assert spawns == [path] and cost < 60


def test_onnx_export_is_probed_once(tmp_path, spawns):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime_genai")
    from conftest import tiny_llama

    from export.onnx.export import export_onnx
    from export.onnx.runtime import OnnxRunner

    out = export_onnx(tiny_llama(0), tmp_path / "fp32", "fp32", validate=False).path
    OnnxRunner(out, threads=1).forward([0, 1])
    OnnxRunner(out, threads=1)
    assert spawns == [out]
    data = out / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(SlimkitError, match=rf"^ONNX Runtime could not load {out / 'model.onnx'}: {ONE_LINE}$"):
        OnnxRunner(out, threads=1)
    assert spawns == [out, out]
