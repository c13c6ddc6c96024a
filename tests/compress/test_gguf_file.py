"""compress.gguf_file's fast header parser agrees with the gguf package's reader."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from compress import gguf_file
from compress.errors import SlimkitError


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    from conftest import tiny_gemma3

    from export.gguf.writer import export_gguf

    out = tmp_path_factory.mktemp("g") / "t.gguf"
    export_gguf(tiny_gemma3(), out, "Q4_0", validate=False)
    return out


def test_matches_gguf_reader(tiny_file):
    info = gguf_file.read_info(tiny_file)
    ref = gguf.GGUFReader(tiny_file)
    assert set(info.metadata) == {k for k in ref.fields if not k.startswith("GGUF.")}
    for key, field in ref.fields.items():
        if not key.startswith("GGUF."):
            assert info.get(key) == pytest.approx(field.contents()) if isinstance(info.get(key), float) \
                else info.get(key) == field.contents(), key
    assert [t.name for t in info.tensors] == [t.name for t in ref.tensors]
    for ours, theirs in zip(info.tensors, ref.tensors):
        assert list(ours.shape) == [int(x) for x in theirs.shape]
        assert (ours.type, ours.offset, ours.n_bytes) == (int(theirs.tensor_type), theirs.data_offset, theirs.n_bytes)
    assert gguf_file.check(tiny_file) == "gemma3"
    assert gguf_file.file_type_name(tiny_file) == "MOSTLY_Q4_0"


def test_tensor_past_the_end(tiny_file, tmp_path):
    bad = tmp_path / "cut.gguf"
    data = tiny_file.read_bytes()
    bad.write_bytes(data[: len(data) - 1])
    with pytest.raises(SlimkitError, match="runs past the end"):
        gguf_file.check(bad)


def test_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(np.arange(64, dtype=np.uint8).tobytes())
    with pytest.raises(SlimkitError, match="bad magic"):
        gguf_file.read_info(p)
