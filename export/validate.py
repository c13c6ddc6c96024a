"""Run an artifact in its own runtime and compare it with the torch model it came from.

GGUF: the same text is tokenized by the HF tokenizer and by llama.cpp (must be identical), then
the logits of a few hundred tokens are compared. Every type reports top-1 agreement and mean
KL(torch fp32 || llama.cpp), the quality cost of the format. Types slimkit packs itself are also
compared with torch running the exact stored values and must match within STORED_TOLERANCE.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import SlimkitError
from compress.evaluate import adds_bos, log_softmax, tokenize_plain, torch_logits_fn

# For the types slimkit writes itself, llama.cpp's logits are compared with torch running the
# exact values stored in the file. Allowed max |logit difference|, relative to
# max(1, max |logit|); llama.cpp runs with an F32 KV cache (its default F16 cache alone costs
# ~1e-3). Measured worst cases (SmolLM2-135M, tiny random llama/gemma3, 255 tokens):
#   F32 2.2e-4 (ggml's GELU uses an F16 lookup table; llama: 2e-6)   F16 1.8e-3 (F16 activations
#   in ggml's CPU F16 matmul)   BF16 1.4e-2   Q8_0 4.2e-2, Q4_0 4.7e-2 (ggml quantizes activations
#   to Q8_0 blocks for these matmuls; to Q8_1 for Q4_1/Q5_0/Q5_1, the same order of error). An export
#   bug (a wrong permutation, a shifted norm, a misplaced block) shows up as O(1) differences.
STORED_TOLERANCE = {"F32": 1e-3, "F16": 1e-2, "BF16": 5e-2, "Q8_0": 1e-1, "Q4_0": 1e-1, "Q4_1": 1e-1,
                    "Q5_0": 1e-1, "Q5_1": 1e-1}
MAX_TOKENS = 256

# Validation text: prose, numbers, code-ish punctuation and non-ASCII, written for this check.
VALIDATION_TEXT = (
    "The lighthouse keeper climbed the 132 steps every evening at 6:45 pm, carrying a lamp, a "
    "notebook and a thermos of tea. In 1897 the tower was rebuilt after a storm; the new lens, "
    "ground in Paris, weighed 2.5 tonnes and could be seen 23 nautical miles away.\n\n"
    "Q: What is 17 * 24?\nA: 17 * 24 = 408.\n\n"
    "def area(r: float) -> float:\n    return 3.14159 * r ** 2  # circle\n\n"
    "Café owners in Zürich said the naïve coöperative model «worked» — mostly. "
    "She wrote: \"Don't forget: the meeting's at 10:30, room B-12.\" Prices rose 4.7% year on year, "
    "and the committee's report (pp. 14-19) recommended three changes: (1) shorter shifts; "
    "(2) a second keeper; (3) electric light. The keeper's diary ends on 31 December 1903 with a "
    "single line: 'All quiet. Sea calm. Lamp lit at dusk.'\n"
)


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, in float64."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_logit": float(np.abs(ref).max()),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "mean_kl": float(_kl(ref, got).mean()),
    }


def stored_reference(ckpt, type_name: str):
    """A copy of the torch model whose weights hold exactly the values the GGUF stores
    (fake-quantized blocks, fp16-rounded tensors), for types slimkit packs itself."""
    import copy

    import torch

    from compress.quant import formats
    from export.gguf import arch as arch_registry
    from export.gguf import types as gtypes

    etype = gtypes.parse(type_name)
    spec = arch_registry.get(ckpt.model.config)
    model = copy.deepcopy(ckpt.model)
    types: dict[int, str] = {}
    with torch.no_grad():
        for hf_name, p in model.named_parameters():
            qtype = gtypes.tensor_type(spec.gguf_name(hf_name), tuple(p.shape), etype)
            types[id(p)] = qtype.name
            if qtype.name in formats.PACKED_TYPES:
                p.copy_(formats.fake_quantize(p, qtype.name))
            elif qtype.name == "F16":
                p.copy_(p.half().float())
            elif qtype.name == "BF16":
                p.copy_(p.bfloat16().float())
    for module in model.modules():   # the activations ggml's CPU matmuls round, per weight type
        if isinstance(module, torch.nn.Linear) and types.get(id(module.weight)) in ACTIVATION_ROUNDING:
            module.register_forward_pre_hook(_round_input(ACTIVATION_ROUNDING[types[id(module.weight)]]))
    return model


# What ggml's CPU matmul does to the activations for a weight type (ggml-cpu's type_traits
# vec_dot_type): quantized to Q8_0 blocks for Q8_0 / Q4_0 / Q5_0 weights, to Q8_1 for Q4_1 / Q5_1
# (the same rounding of the values: d = amax / 127 stored as fp16, q = round(x / d)), converted to
# F16 for F16 weights. The torch reference does the same, so only summation order is left.
ACTIVATION_ROUNDING = {"Q8_0": "Q8_0", "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q4_1": "Q8_0", "Q5_1": "Q8_0",
                       "F16": "F16"}


def _round_input(kind: str):
    from compress.quant import formats

    def hook(module, args):
        x = args[0]
        if kind == "F16":
            return (x.half().float(), *args[1:])
        if x.shape[-1] % formats.block_size("Q8_0"):
            return None
        flat = x.reshape(-1, x.shape[-1]).float()
        return (formats.fake_quantize(flat, "Q8_0").reshape(x.shape).to(x.dtype), *args[1:])
    return hook


def validate_gguf(path: str | os.PathLike, ckpt, type_name: str, text: str | None = None,
                  max_tokens: int = MAX_TOKENS, weights_as_stored: bool = False) -> dict[str, Any]:
    """Tokenizer identity + logits parity of a GGUF against `ckpt`; raises SlimkitError on failure.

    weights_as_stored: ckpt's weights are already exactly the file's values (a QAT checkpoint
    written with its trained blocks), so the exactness check compares against ckpt itself.
    """
    from export.runtime import LlamaRunner

    text = text or VALIDATION_TEXT
    hf_ids = tokenize_plain(ckpt.tokenizer, text)
    runner = LlamaRunner(Path(path), n_ctx=max_tokens + 1, kv_f32=True)
    try:
        ll_ids = runner.tokenize(text)
        if hf_ids != ll_ids:
            i = next((k for k, (a, b) in enumerate(zip(hf_ids, ll_ids)) if a != b), min(len(hf_ids), len(ll_ids)))
            raise SlimkitError(f"validation failed: llama.cpp tokenizes differently from the torch tokenizer "
                               f"at token {i} (torch {hf_ids[i:i + 3]}, llama.cpp {ll_ids[i:i + 3]})")
        tokens = hf_ids[: max_tokens - 1]
        if adds_bos(ckpt.tokenizer):
            tokens = [ckpt.tokenizer.bos_token_id] + tokens
        got = runner.logits(tokens)
    finally:
        runner.close()
    ref = torch_logits_fn(ckpt.model)(tokens)
    report: dict[str, Any] = {"type": type_name, "n_tokens": len(tokens), "tokenizer_identical": True,
                              **compare_logits(ref, got)}
    if not np.isfinite(got).all():
        raise SlimkitError(f"validation failed: llama.cpp produced non-finite logits for {path}")
    # A QAT file of a K-quant plan (Q4_K_M) holds slimkit's own blocks too: quantized tolerance.
    relative = STORED_TOLERANCE.get(type_name, STORED_TOLERANCE["Q4_0"] if weights_as_stored else None)
    if relative is not None:  # every type export.gguf.types.NATIVE writes (tested), and QAT files
        # Exactness: llama.cpp against torch running the very values stored in the file.
        stored = ref if weights_as_stored else torch_logits_fn(stored_reference(ckpt, type_name))(tokens)
        report["stored"] = compare_logits(stored, got)
        limit = relative * max(1.0, report["stored"]["max_abs_logit"])
        report["tolerance"] = limit
        report["passed"] = report["stored"]["max_abs_diff"] <= limit
        if not report["passed"]:
            raise SlimkitError(f"validation failed: llama.cpp's {type_name} logits differ from torch on the stored "
                               f"weights by {report['stored']['max_abs_diff']:.4g} > {limit:.4g}; "
                               "the export is wrong, please report it")
    else:
        report["passed"] = True  # llama.cpp's own quantizer: agreement and KL are reported, not thresholded
    return report
