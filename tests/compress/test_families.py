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
