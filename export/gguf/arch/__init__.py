"""Architecture registry for the GGUF exporter: one module per family (llama.cpp style)."""
from __future__ import annotations

from export.gguf.arch.base import ArchSpec, get, register, registered

# Importing the family modules registers them.
from export.gguf.arch import gemma3, llama, qwen  # noqa: E402,F401

__all__ = ["ArchSpec", "get", "register", "registered"]
