"""ONNX export: decoder with KV cache (onnxruntime-genai's model builder), ONNX Runtime
quantization (int8 and int4 MatMulNBits, fp16 conversion), genai_config.json, validation against torch.

Importing this package imports neither onnx nor onnxruntime; they load when an export or a
run starts (`slimkit[onnx]`).
"""
