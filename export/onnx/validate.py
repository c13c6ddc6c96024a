"""Validate an ONNX export in ONNX Runtime against the torch model it came from.

Checks (all on export.validate's VALIDATION_TEXT):
- tokenizer: the tokenizer files written beside the model tokenize exactly like torch's;
- logits of up to MAX_TOKENS tokens, full recomputation, against torch fp32: fp32 and fp16
  must match within LOGIT_TOLERANCE; int8/int4 report top-1 agreement and mean KL, which must
  clear QUANT_LIMITS (set from measured correct exports);
- KV cache: prefill, then KV_STEPS tokens decoded one at a time with past/present, against
  the same model's full recomputation (KV_TOLERANCE);
- greedy decoding of GREEDY_TOKENS tokens with the KV cache, in ONNX Runtime and in
  onnxruntime-genai (which loads genai_config.json): identical to torch for fp32, reported
  for the other precisions.
Tolerances are relative: max |logit difference| / max(1, max |torch logit|).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.errors import SlimkitError
from compress.evaluate import adds_bos, tokenize_plain
from export.onnx.runtime import OnnxRunner, genai_greedy, genai_model, load_tokenizer
from export.validate import MAX_TOKENS, VALIDATION_TEXT, compare_logits

# Measured (relative max |dlogit|; SmolLM2-135M, gemma3-270m, tiny random llama / gemma3):
#   fp32 logits  2.1e-6, 1.3e-4 (the builder rounds Gemma's embedding scale sqrt(640) to 25.3), 1.4e-6, 4e-7
#   fp16 logits  3.0e-3 (SmolLM2), 4.0e-3 / 1.4e-3 (tiny): fp16 weights, activations and KV cache
#   KV cache vs full recomputation: fp32 <= 9e-7, fp16 <= 1.1e-3, int8 / int4 2.2e-2 (SmolLM2;
#   int8 activation blocks differ between a 1-token and a 256-token run)
#   int8 / int4 against torch: SmolLM2 top-1 0.96 / 0.54, mean KL 0.005 / 0.43 (llama.cpp's Q8_0 /
#   Q4_0 of the same model: 0.95 / 0.63, KL 0.004 / 0.32).
# QUANT_LIMITS: int8 / int4 against the float model, 1.5x the worst KL (top-1: 1 - 1.5 (1 - worst))
# of the correct exports in benchmarks/results/validation.json (scripts/bench_validation.py: SmolLM2,
# gemma3-270m and the tiny random test models; the tiny 256-wide llama is the worst case).
LOGIT_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}
KV_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2, "int4": 5e-2}
QUANT_LIMITS = {"int8": {"max_kl": 0.019, "min_top1": 0.794}, "int4": {"max_kl": 1.9, "min_top1": 0.0}}
KV_STEPS = 32
GREEDY_PROMPT, GREEDY_TOKENS = 16, 32


def torch_greedy(model, prompt: Sequence[int], n: int) -> list[int]:
    """n greedy tokens from torch with transformers' KV cache (no EOS stop, no logits processing)."""
    import torch

    out: list[int] = []
    with torch.inference_mode():
        res = model(input_ids=torch.tensor([list(prompt)]), use_cache=True)
        while True:
            out.append(int(res.logits[0, -1].argmax()))
            if len(out) == n:
                return out
            res = model(input_ids=torch.tensor([out[-1:]]), past_key_values=res.past_key_values, use_cache=True)


def _tokens(model_dir: Path, ckpt, text: str, max_tokens: int) -> list[int]:
    ref_ids = tokenize_plain(ckpt.tokenizer, text)
    tok = load_tokenizer(model_dir)
    got_ids = tokenize_plain(tok, text)
    if got_ids != ref_ids or adds_bos(tok) != adds_bos(ckpt.tokenizer):
        i = next((k for k, (a, b) in enumerate(zip(ref_ids, got_ids)) if a != b), min(len(ref_ids), len(got_ids)))
        raise SlimkitError(f"validation failed: the exported tokenizer differs from torch's at token {i} "
                           f"(torch {ref_ids[i:i + 3]}, export {got_ids[i:i + 3]})")
    tokens = ref_ids[: max_tokens - 1]
    return [ckpt.tokenizer.bos_token_id] + tokens if adds_bos(ckpt.tokenizer) else tokens


def _kv_check(runner: OnnxRunner, tokens: list[int], full: np.ndarray, precision: str, scale: float) -> dict:
    split = len(tokens) - KV_STEPS
    logits, past = runner.forward(tokens[:split])
    rows = [logits]
    for t in tokens[split:]:
        logits, past = runner.forward([t], past)
        rows.append(logits)
    cached = np.concatenate(rows)
    diff = float(np.abs(cached.astype(np.float64) - full).max())
    return {"steps": KV_STEPS, "max_abs_diff": diff, "tolerance": KV_TOLERANCE[precision] * scale,
            "top1_agreement": float((cached.argmax(-1) == full.argmax(-1)).mean())}


def _greedy_check(model_dir: Path, runner: OnnxRunner, ckpt, tokens: list[int]) -> dict:
    prompt = tokens[:GREEDY_PROMPT]
    ref = torch_greedy(ckpt.model, prompt, GREEDY_TOKENS)
    got = runner.greedy(prompt, GREEDY_TOKENS)
    report: dict[str, Any] = {"prompt_tokens": len(prompt), "tokens": GREEDY_TOKENS, "torch": ref,
                              "onnxruntime": got, "identical": got == ref}
    model = genai_model(model_dir)
    if model is not None:  # onnxruntime-genai loads genai_config.json; it stops at EOS like an app
        gen = genai_greedy(model, prompt, GREEDY_TOKENS)
        eos = ckpt.tokenizer.eos_token_id
        stopped_at_eos = len(gen) == GREEDY_TOKENS or (bool(gen) and gen[-1] == eos)
        report.update(genai=gen, genai_identical=gen == ref[:len(gen)] and stopped_at_eos)
    return report


def validate_onnx(model_dir: str | Path, ckpt, precision: str, text: str | None = None,
                  max_tokens: int = MAX_TOKENS, gates: bool = True) -> dict[str, Any]:
    """Run every check above; returns the report, raises SlimkitError when a check fails
    (gates False: measure only, for scripts/bench_validation.py)."""
    model_dir = Path(model_dir)
    tokens = _tokens(model_dir, ckpt, text or VALIDATION_TEXT, max_tokens)
    from compress.evaluate import torch_logits_fn

    runner = OnnxRunner(model_dir)
    full = runner.logits(tokens).astype(np.float64)
    if not np.isfinite(full).all():
        hint = ("; this model's activations overflow float16 (Gemma does): export fp32, int8 or int4"
                if precision == "fp16" else "")
        raise SlimkitError(f"validation failed: ONNX Runtime produced non-finite logits for the {precision} "
                           f"export{hint}")
    ref = torch_logits_fn(ckpt.model)(tokens)
    report: dict[str, Any] = {"precision": precision, "n_tokens": len(tokens), "tokenizer_identical": True,
                              **compare_logits(ref, full)}
    scale = max(1.0, report["max_abs_logit"])
    failures = []
    if precision in LOGIT_TOLERANCE:
        report["tolerance"] = LOGIT_TOLERANCE[precision] * scale
        if report["max_abs_diff"] > report["tolerance"]:
            failures.append(f"logits differ from torch by {report['max_abs_diff']:.4g} > {report['tolerance']:.4g}")
    else:
        limits = report["limits"] = QUANT_LIMITS[precision]
        if report["mean_kl"] > limits["max_kl"] or report["top1_agreement"] < limits["min_top1"]:
            failures.append(f"mean KL to torch {report['mean_kl']:.4g} (gate {limits['max_kl']}), top-1 agreement "
                            f"{report['top1_agreement']:.3f} (gate {limits['min_top1']})")
    kv = report["kv_cache"] = _kv_check(runner, tokens, full, precision, scale)
    if kv["max_abs_diff"] > kv["tolerance"]:
        failures.append(f"KV-cache decoding differs from full recomputation by {kv['max_abs_diff']:.4g} "
                        f"> {kv['tolerance']:.4g}")
    greedy = report["greedy"] = _greedy_check(model_dir, runner, ckpt, tokens)
    if precision == "fp32" and not (greedy["identical"] and greedy.get("genai_identical", True)):
        failures.append(f"greedy generation differs from torch (torch {greedy['torch']}, onnxruntime "
                        f"{greedy['onnxruntime']}, genai {greedy.get('genai')})")
    report["passed"] = not failures
    if failures and gates:
        raise SlimkitError(f"validation failed for the {precision} ONNX export: {'; '.join(failures)}; "
                           "the export is wrong, please report it")
    return report
