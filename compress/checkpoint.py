"""Load any source (HF directory, .gguf file, zoo name) as a torch model + tokenizer; save them.

A .gguf source is dequantized into a float32 torch model by transformers' GGUF loader, with a
tokenizer rebuilt from the GGUF's own metadata (compress.gguf_tokenizer): transformers' GGUF
tokenizer conversion is wrong for SmolLM2. The converted checkpoint is cached under
<cache>/gguf/<sha256 of the file> so the second load reads safetensors in seconds.
Every checkpoint slimkit writes carries slimkit.json (history) and, when known, gguf_vocab.json
(the exact llama.cpp vocabulary, so exporting back to GGUF is lossless).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from compress import gguf_file, live, zoo
from compress.atomic import replace_dir, restore_aside
from compress import families
from compress.errors import SlimkitError

HISTORY_FILE = "slimkit.json"
VOCAB_FILE = "gguf_vocab.json"
HISTORY_FORMAT = 1
WEIGHTS_GLOB = "model*.safetensors"  # save_pretrained's model.safetensors or its shards
BLOCKS_FILE = "gguf_blocks.safetensors"  # a QAT checkpoint's trained GGUF blocks (compress.quant.qat)
CACHE_VERSION = 3  # bump when the GGUF -> torch conversion changes, so stale conversions are ignored


@dataclass
class Checkpoint:
    """A loaded model. Unpacks as `model, tokenizer = load(...)`."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    history: dict[str, Any] = field(default_factory=dict)
    gguf_vocab: Any = None  # compress.gguf_tokenizer.GGUFVocab or None
    path: Path | None = None  # HF directory the weights were read from
    quant: Any = None  # compress.quant.qat.QuantizedWeights of a QAT checkpoint, else None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer))

    @property
    def family(self) -> str:
        return family_of(self.model.config.model_type)


def family_of(model_type: str) -> str:
    """slimkit's family name for a HF model_type (compress.families), or a one-line error."""
    return families.by_model_type(model_type).name


def load(source: str | os.PathLike, *, trust_remote_code: bool = False) -> Checkpoint:
    """Load a HF directory, a .gguf file or a zoo name (see `slimkit zoo`) as float32 torch.
    A `memory:` name (compress.live) is the registered in-memory checkpoint itself."""
    text = str(source)
    if text.startswith(live.PREFIX):
        return live.get(text)
    if text in zoo.ZOO:
        ckpt = load_gguf(zoo.get(text).path())
        ckpt.history.setdefault("zoo", text)
        return ckpt
    path = Path(text).expanduser()
    restore_aside(path)   # a save killed between its renames left the previous checkpoint aside
    if path.is_dir():
        return load_hf_dir(path, trust_remote_code=trust_remote_code)
    if path.is_file():
        if gguf_file.is_gguf(path):
            return load_gguf(path)
        raise SlimkitError(f"{path} is neither a GGUF file nor a HF checkpoint directory; "
                           "give a directory with config.json, a .gguf file or a zoo name")
    raise SlimkitError(f"{text}: no such file, directory or zoo model; "
                       f"give a HF directory, a .gguf file or one of: {', '.join(zoo.ZOO)}")


def _check_dir(path: Path) -> dict[str, Any]:
    """config.json of a HF checkpoint directory, checked before any weight is read."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise SlimkitError(f"{path} has no config.json; point at a Hugging Face checkpoint directory "
                           "(config.json + *.safetensors + tokenizer files)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlimkitError(f"{config_path} is not valid JSON ({exc}); repair or re-save the checkpoint") from None
    if not isinstance(config, dict):
        raise SlimkitError(f"{config_path} is not a JSON object; repair or re-save the checkpoint")
    model_type = config.get("model_type", "?")
    family_of(model_type if isinstance(model_type, str) else repr(model_type))
    if not any(path.glob("*.safetensors")):
        raise SlimkitError(f"{path} has no *.safetensors weights; slimkit loads safetensors only "
                           "(re-save with save_pretrained(safe_serialization=True))")
    return config


def _sidecars(path: Path) -> tuple[dict[str, Any], Any, Any]:
    """slimkit.json (history), gguf_vocab.json and QAT blocks of a directory, when present."""
    history = json.loads((path / HISTORY_FILE).read_text()) if (path / HISTORY_FILE).is_file() else {}
    vocab = None
    if (path / VOCAB_FILE).is_file():
        from compress.gguf_tokenizer import GGUFVocab

        vocab = GGUFVocab.from_json(path / VOCAB_FILE)
    quant = None
    if (path / BLOCKS_FILE).is_file():
        from compress.quant.qat import QuantizedWeights

        quant = QuantizedWeights.load(path)
    return history, vocab, quant


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _unreadable(path: Path, exc: Exception) -> SlimkitError:
    return SlimkitError(f"cannot load {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                        "the weights may be truncated: re-save or copy the checkpoint again")


def load_hf_dir(path: Path, *, trust_remote_code: bool = False) -> Checkpoint:
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _check_dir(path)
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar: noise for models of this size
    # Anything transformers or tokenizers raise on these files is bad input (a config field of the
    # wrong type, a tokenizer.json that does not parse, weights of other shapes): one line, naming it.
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise _unreadable(path, exc) from exc
    except Exception as exc:  # noqa: BLE001 (config validation, size mismatches: see above)
        raise SlimkitError(f"cannot build the model from {path / 'config.json'} and its weights: "
                           f"{_first_line(exc)}; repair or re-save the checkpoint") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 (tokenizers raises plain Exception for a bad tokenizer.json)
        raise SlimkitError(f"cannot load the tokenizer of {path}: {_first_line(exc)}; repair or re-save "
                           "tokenizer.json / tokenizer_config.json") from exc
    model.eval()
    history, vocab, quant = _sidecars(path)
    return Checkpoint(model, tokenizer, history or {"format": HISTORY_FORMAT, "source": str(path), "stages": []},
                      vocab, path, quant)


class StateDictModel:
    """Stand-in for a PreTrainedModel when only config + tensors are needed (export without
    validation): skips building the torch module, which costs seconds for nothing."""

    def __init__(self, config: Any, tensors: dict[str, Any]) -> None:
        self.config = config
        self._tensors = tensors

    def state_dict(self) -> dict[str, Any]:
        return self._tensors


def load_weights_only(source: str | os.PathLike) -> Checkpoint:
    """A Checkpoint whose model is a StateDictModel; the tokenizer is loaded only when no
    gguf_vocab.json travels with the weights. Sources other than a single-file directory
    fall back to load()."""
    path = Path(source).expanduser()
    if not path.is_dir() or len(list(path.glob(WEIGHTS_GLOB))) != 1:
        return load(source)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_json = _check_dir(path)
    history, vocab, quant = _sidecars(path)
    config = _config(path, config_json, history)
    try:
        tensors = load_file(next(path.glob(WEIGHTS_GLOB)))
    except (OSError, SafetensorError) as exc:
        raise _unreadable(path, exc) from exc
    tokenizer = None
    if vocab is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return Checkpoint(StateDictModel(config, tensors), tokenizer, history, vocab, path, quant)


def _config(path: Path, config_json: dict[str, Any], history: dict[str, Any]) -> Any:
    """The model config. slimkit's own checkpoints carry the full config (defaults included) in
    slimkit.json, which spares importing transformers' config classes (seconds); config.json
    still wins on every key it has."""
    full = history.get("architecture")
    if not full:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path)
    import types

    return types.SimpleNamespace(**{**full, **config_json, "name_or_path": str(path)})


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(path: Path) -> str | None:
    """sha256 over a file, or a directory's files (relative names + contents), skipping hidden
    temporaries; None when the path does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.relative_to(path)}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def load_gguf(path: Path) -> Checkpoint:
    """Dequantize a GGUF into float32 torch (cached by the file's sha256)."""
    arch = gguf_file.check(path)  # raises SlimkitError for truncated/corrupt/unsupported files
    sha = file_sha256(path)
    cached = zoo.cache_dir() / "gguf" / f"v{CACHE_VERSION}-{sha[:32]}"
    if (cached / HISTORY_FILE).is_file():
        return load_hf_dir(cached)
    model, tokenizer, vocab = _convert_gguf(path, arch)
    history = {"format": HISTORY_FORMAT, "source": str(path), "source_sha256": sha,
               "stages": [{"stage": "load", "config": {"from": "gguf", "file": path.name,
                                                        "file_type": gguf_file.file_type_name(path)}}]}
    ckpt = Checkpoint(model, tokenizer, history, vocab, None)
    try:
        save(ckpt, cached)
    except OSError:
        pass  # a read-only cache only costs speed
    else:
        ckpt.path = cached
    return ckpt


def _gguf_config(path: Path, arch: str):
    """transformers' config of a GGUF, with what its GGUF loader leaves out read from the file: the
    head size when it is not hidden / heads (`{arch}.attention.key_length`: Qwen3, Gemma 3, whose
    tensors otherwise fail to load) and Llama 3's RoPE scaling from the `rope_freqs` tensor
    (otherwise the model loads with unscaled RoPE and computes something else)."""
    import numpy as np
    from transformers import AutoConfig

    from compress.rope import llama3_parameters

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    info = gguf_file.read_info(path)
    key_length = info.get(f"{arch}.attention.key_length")
    if key_length and (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads) != key_length:
        config.head_dim = int(key_length)   # the attention modules read config.head_dim when it is set
    names = {t.name for t in info.tensors}
    if "blk.0.attn_q.bias" in names and hasattr(config, "attention_bias"):
        config.attention_bias = True   # a pruned Qwen2 is written in llama's graph, with its q/k/v biases
    freqs = next((t for t in info.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is not None:
        import gguf

        if freqs.type != gguf.GGMLQuantizationType.F32:
            raise SlimkitError(f"{path.name}: rope_freqs is not F32; the file is damaged: re-export it")
        with open(path, "rb") as f:
            f.seek(freqs.offset)
            factors = np.frombuffer(f.read(freqs.n_bytes), dtype=np.float32)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rotary = int(info.get(f"{arch}.rope.dimension_count", head_dim))
        base = float(info.get(f"{arch}.rope.freq_base", 10000.0))
        rope = llama3_parameters(factors, base, rotary)
        if rope is not None:
            config.rope_parameters = rope
    return config


def _convert_gguf(path: Path, arch: str):
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from compress.gguf_tokenizer import tokenizer_from_vocab, vocab_from_gguf

    vocab = vocab_from_gguf(path)
    tokenizer = tokenizer_from_vocab(vocab)
    config = _gguf_config(path, arch)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, config=config,
                                                 dtype=torch.float32)
    model.eval()
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # weights are dequantized: this is a plain float checkpoint now
    model.hf_quantizer = None
    for key in ("bos", "eos", "pad", "unk"):
        setattr(cfg, f"{key}_token_id", vocab.special_ids.get(key))
    cfg.name_or_path = path.stem
    model.generation_config = GenerationConfig.from_model_config(cfg)
    return model, tokenizer, vocab


def record_stage(history: dict[str, Any], stage: dict[str, Any]) -> None:
    """Append `stage` to `history` with the parent's weight hash."""
    history.setdefault("stages", []).append({**stage, "parent_sha256": history.get("weights_sha256")})


def save(ckpt: Checkpoint, out_dir: str | os.PathLike, *, stage: dict[str, Any] | None = None) -> Path:
    """Write a HF safetensors directory + slimkit.json (+ gguf_vocab.json), atomically.

    `stage` ({"stage": name, "config": {...}, "metrics": {...}}) is appended to the history with
    the parent's weight hash, so the chain of transformations can be audited.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(json.dumps(ckpt.history or {"format": HISTORY_FORMAT, "stages": []}))
    history.setdefault("stages", [])
    if stage is not None:
        record_stage(history, stage)
    history["family"] = family_of(ckpt.model.config.model_type)
    history["architecture"] = ckpt.model.config.to_dict()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ckpt.model.save_pretrained(tmp, safe_serialization=True)
        ckpt.tokenizer.save_pretrained(tmp)
        if ckpt.gguf_vocab is not None:
            ckpt.gguf_vocab.to_json(tmp / VOCAB_FILE)
        if ckpt.quant is not None:
            ckpt.quant.save(tmp)
        weights = sorted(tmp.glob(WEIGHTS_GLOB))
        history["weights_sha256"] = file_sha256(weights[0]) if len(weights) == 1 else None
        (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=2, default=str))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ckpt.history, ckpt.path = history, out
    return out
