"""Rationale distillation data: task records, teacher-forced prompts, rationale sources, cached generation.

Submodules are imported on use (no llama_cpp or openai at `import compress.rationale`):
`tasks` (schema, loaders, answer parsing), `formats` (letter or text answers), `prompts`, `sources`,
`generate`, `train`, `evaluate`.
"""
