"""GGUF export: architecture registry, tokenizer metadata, writer, llama.cpp quantizer."""
