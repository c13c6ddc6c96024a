"""Shared fixtures: tiny random llama / gemma3 checkpoints built in-process (seeded), and the
location of ../shared/data (tests that need it skip cleanly when it is absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A tiny private cache so tests never touch the user's ~/.cache/slimkit conversions,
# except the expensive real-model ones which are shared across runs on purpose.
os.environ.setdefault("SLIMKIT_CACHE", str(Path.home() / ".cache" / "slimkit"))

TRAIN_TEXT = (
    "Once upon a time there was a little robot who lived in a lighthouse. Every night it counted "
    "the ships: one, two, three, 42, 1999. \"Hello!\" said the robot; the sea said nothing. "
    "Café, naïve, Zürich — unicode works too. def f(x): return x * 2  # code\n\n"
    "The quick brown fox jumps over the lazy dog. Numbers like 3.14159 and 2,718 appear often.\n"
) * 20
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def shared_text(name: str) -> Path:
    path = SHARED_DATA / "text" / name
    if not path.is_file():
        pytest.skip(f"{path} not present (../shared/data is optional)")
    return path


def tiny_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style) trained in-process on TRAIN_TEXT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TRAIN_TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def _init(model, seed: int, std: float):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (0.0 if "gemma" in type(model).__name__.lower() else 1.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def tiny_llama(seed: int = 0, tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.checkpoint import Checkpoint

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = _init(LlamaForCausalLM(cfg), seed, std=0.15)
    return Checkpoint(model, tok, {"format": 1, "source": f"tiny-llama-seed{seed}", "stages": []})


def tiny_gemma3(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from compress.checkpoint import Checkpoint

    tok = tiny_tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                           sliding_window=16, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                           rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = _init(Gemma3ForCausalLM(cfg), seed, std=0.15)
    return Checkpoint(model, tok, {"format": 1, "source": f"tiny-gemma3-seed{seed}", "stages": []})


def _tiny_hf(family: str, seed: int, hidden: int = 64, ffn: int = 128, **extra):
    """A tiny random model of a Llama-shaped family (hidden 64, 2 layers, 4 heads / 2 KV heads)."""
    import transformers

    from compress.checkpoint import Checkpoint

    config_cls, model_cls = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                             "mistral": ("MistralConfig", "MistralForCausalLM"),
                             "llama": ("LlamaConfig", "LlamaForCausalLM")}[family]
    tok = tiny_tokenizer()
    cfg = getattr(transformers, config_cls)(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
    model = _init(getattr(transformers, model_cls)(cfg), seed, std=0.15)
    return Checkpoint(model, tok, {"format": 1, "source": f"tiny-{family}-seed{seed}", "stages": []})


def tiny_qwen2(seed: int = 0):
    return _tiny_hf("qwen2", seed, rope_theta=1_000_000.0)


def tiny_qwen3(seed: int = 0):
    return _tiny_hf("qwen3", seed, head_dim=32, rope_theta=1_000_000.0)   # head_dim != hidden / heads, as Qwen3's


def tiny_mistral(seed: int = 0):
    return _tiny_hf("mistral", seed, sliding_window=None, rope_theta=10_000.0)


def tiny_wide_llama(seed: int = 0):
    """A tiny llama whose every matrix is a whole number of 256-value super-blocks per row, so that
    every GGUF type (K-quants, IQ4_XS, TQ*) is written as itself, not as a shape fallback."""
    return _tiny_hf("llama", seed, hidden=256, ffn=512)


def tiny_llama3(seed: int = 0):
    """A tiny llama with Llama 3.1's RoPE scaling (rope_type llama3; original context 64, so the
    scaled frequencies matter inside the test windows)."""
    ck = _tiny_hf("llama", seed, rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                                  "rope_theta": 500_000.0})
    ck.history["source"] = f"tiny-llama3-seed{seed}"
    return ck


TINY = {"llama": tiny_llama, "gemma3": tiny_gemma3, "qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "mistral": tiny_mistral}


def prune_shape(family: str, *drop: str) -> dict:
    """A shape that removes every kind of structure from the family's tiny model (a block, hidden
    and FFN channels, heads), less the dims named in `drop`. Gemma 3's tiny model has 3 blocks and
    2 heads over 1 KV head; the others 2 blocks and 4 heads over 2."""
    shape = (dict(layers=2, hidden=48, ffn=96, heads=1, kv_heads=1) if family == "gemma3"
             else dict(layers=1, hidden=48, ffn=96, heads=2, kv_heads=1))
    return {k: v for k, v in shape.items() if k not in drop}


@pytest.fixture(params=sorted(TINY))
def tiny_ckpt(request):
    return TINY[request.param]()


@pytest.fixture(scope="session")
def calib(tmp_path_factory):
    """Calibration text for pruning: the tiny tokenizer's own training text, repeated (~2k tokens)."""
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(TRAIN_TEXT * 12)
    return str(path)


def zoo_path(name: str) -> Path:
    """Path of a bundled model's GGUF, or skip when its pip package is not installed."""
    from compress.errors import SlimkitError
    from compress.zoo import get

    try:
        return get(name).path()
    except SlimkitError as exc:
        pytest.skip(str(exc))


def free_port() -> int:
    """A 127.0.0.1 TCP port that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (just released)."""
    return free_port()


@pytest.fixture
def one_thread():
    """torch on one thread: the tiny models train much faster single-threaded on a shared,
    oversubscribed machine (OpenMP threads spin on each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gguf_file(tmp_path_factory, ckpt, gtype: str, name: str) -> Path:
    """A tiny random checkpoint exported by slimkit's GGUF writer (no validation: random weights)."""
    from export.gguf.writer import export_gguf

    out = tmp_path_factory.mktemp("gguf") / name
    export_gguf(ckpt, out, gtype, validate=False)
    return out


def libggml_base():
    """ggml's own quantizers: the libggml-base shared library that llama-cpp-python ships (ctypes),
    or skip when llama-cpp-python or its bundled ggml is missing."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not path.is_file():
        pytest.skip(f"{path} not found: llama-cpp-python without its bundled ggml")
    return ctypes.CDLL(str(path))
