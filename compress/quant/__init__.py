"""GGUF block numerics in torch (formats.py is the single source of truth)."""
