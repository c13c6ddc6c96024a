"""export: model -> artifact (GGUF, ONNX, Ollama); may import compress, never devices."""
