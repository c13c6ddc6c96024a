"""Build the ONNX decoder with onnxruntime-genai's model builder.

Why the model builder and not optimum-onnx: optimum-onnx 0.1.0 requires transformers < 4.58,
and slimkit runs transformers 5 (its Gemma-3 and rope_parameters configs); downgrading would
break the rest of the toolkit. The builder reads the HF checkpoint with the installed
transformers and writes the graph itself: GroupQueryAttention with fused rotary embeddings
and past/present KV inputs and outputs, int8/int4 weights through ONNX Runtime's
MatMulNBitsQuantizer, and the genai_config.json that onnxruntime-genai loads.

int8 is MatMulNBits (8-bit weights in blocks, activations quantized to int8 per block at run
time), not onnxruntime.quantization.quantize_dynamic: the latter quantizes each activation
tensor with one scale, and SmolLM2-135M's activation outliers then cost top-1 agreement 0.52
and mean KL 0.58 against torch (worse than int4), where MatMulNBits int8 gives 0.96 and 0.005.
The builder keeps the embedding table fp32 at int8 (its GatherBlockQuantized is 4-bit only).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

from compress import families
from compress.errors import SlimkitError
from export.onnx.config import ACCURACY_LEVEL, QUANTIZED, OnnxExportConfig
from export.onnx.layout import MODEL_FILE

INSTALL_HINT = "pip install 'slimkit[onnx]'"
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.weight$")


def require_onnx() -> None:
    """Import the ONNX stack once, or say how to install it."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import onnx  # noqa: F401
        import onnx_ir  # noqa: F401  (the model builder needs it but does not declare it)
        import onnxruntime  # noqa: F401
        import onnxruntime_genai.models.builder  # noqa: F401
    except ImportError as exc:
        raise SlimkitError(f"ONNX export needs onnx, onnxruntime and onnxruntime-genai ({exc.name or exc} "
                           f"is missing): {INSTALL_HINT}") from None
    finally:  # onnxruntime's matmul_nbits_quantizer calls logging.basicConfig(level=INFO) on import
        root.setLevel(level)
        root.handlers[:] = handlers


def check_exportable(ckpt) -> str:
    """The HF architecture name for the builder; raises for other families or non-uniform
    layer shapes (the builder reads one global head count and FFN width from config.json)."""
    architecture = families.get(ckpt.family).onnx_architecture   # the name the builder dispatches on
    cfg = ckpt.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    q, kv, ffn = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim, cfg.intermediate_size
    expected = {"q_proj": (q, cfg.hidden_size), "k_proj": (kv, cfg.hidden_size), "v_proj": (kv, cfg.hidden_size),
                "o_proj": (cfg.hidden_size, q), "gate_proj": (ffn, cfg.hidden_size),
                "up_proj": (ffn, cfg.hidden_size), "down_proj": (cfg.hidden_size, ffn)}
    layers = set()
    for name, tensor in ckpt.model.state_dict().items():
        m = LAYER_KEY.match(name)
        if not m or m.group(3) not in expected:
            continue
        layers.add(int(m.group(1)))
        if tuple(tensor.shape) != expected[m.group(3)]:
            raise SlimkitError(f"{name} has shape {tuple(tensor.shape)} but config.json implies {expected[m.group(3)]}; "
                               "ONNX export needs uniform layers (one head count and FFN width): prune uniformly")
    if len(layers) != cfg.num_hidden_layers:
        raise SlimkitError(f"the checkpoint has {len(layers)} decoder layers but config.json says "
                           f"{cfg.num_hidden_layers}; re-save it with slimkit")
    return architecture


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture the builder's prints and progress bars; silence ONNX Runtime's quantizers'
    per-node INFO logging (returns the captured console text)."""
    log = io.StringIO()
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield log
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _adapt_config(config: Any, architecture: str) -> None:
    """Fit a transformers-5 config to what the builder reads (written for transformers 4)."""
    config.architectures = [architecture]
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        # Gemma-3: transformers 5 nests RoPE per layer type; the builder wants the global theta
        # flat and the sliding-window layers' theta in rope_local_base_freq.
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        config.rope_parameters = dict(rope["full_attention"])
        config.rope_theta = rope["full_attention"]["rope_theta"]


def _extra_options(cfg: OnnxExportConfig) -> list[str]:
    # Every layer gets a full-length KV cache (no ring buffer for sliding-window layers), so one
    # runner drives every family; hf_token=false: never ask a hub for anything.
    extra = ["windowed_kv_cache=false", "hf_token=false"]
    if cfg.precision in QUANTIZED:
        extra += [f"block_size={cfg.quant_block_size}", f"accuracy_level={ACCURACY_LEVEL}"]
    return extra


def build(hf_dir: Path, out: Path, cfg: OnnxExportConfig, architecture: str, work: Path) -> str:
    """Run the model builder from HF directory `hf_dir` into `out`; returns its console log."""
    from onnxruntime_genai.models import builder

    # int8/int4: the builder quantizes with ONNX Runtime's MatMulNBitsQuantizer. fp16 is made
    # from the fp32 CPU graph by ONNX Runtime's float16 converter (to_fp16): the builder's fp16
    # graph targets GPUs (GroupQueryAttention with fused Q/K norms, which the CPU provider
    # rejects for Gemma-3).
    precision = cfg.precision if cfg.precision in QUANTIZED else "fp32"
    extra = _extra_options(cfg)
    cache = work / "builder-cache"
    try:
        with _quiet() as log:
            options = builder.parse_extra_options(None, str(hf_dir), str(out), precision, "cpu", str(cache), extra)
            _adapt_config(options["hf_details"]["hf_config"], architecture)
            builder.create_model(None, str(hf_dir), str(out), precision, "cpu", str(cache), **options)
    except Exception as exc:  # the builder raises bare Exception/ValueError/KeyError for what it cannot build
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SlimkitError(f"onnxruntime-genai's model builder failed ({type(exc).__name__}: {first}); "
                           "run with --debug for the traceback") from exc
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return log.getvalue()


def _copy_side_files(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # genai_config.json, tokenizer files
        if not f.name.startswith(MODEL_FILE):
            shutil.copy2(f, out / f.name)


def _fix_modes(out: Path) -> None:
    for f in out.iterdir():
        if f.name.startswith(MODEL_FILE):
            os.chmod(f, 0o644)  # onnx/quantizers write external data 0600


def to_fp16(src: Path, out: Path) -> None:
    """fp16 weights, activations, KV cache and logits (ONNX Runtime's float16 converter,
    onnxruntime.transformers.float16); ops without fp16 kernels stay fp32 behind Casts."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    _copy_side_files(src, out)
    model = convert_float_to_float16(onnx.load(src / MODEL_FILE), keep_io_types=False, disable_shape_infer=True)
    onnx.save_model(model, out / MODEL_FILE, save_as_external_data=True, location=MODEL_FILE + ".data")
    _fix_modes(out)
