"""What the predictor needs to know about an artifact: bytes read per token, FLOPs per token, KV-cache size.

GGUF: from the header (architecture metadata and the tensor table). gguf.GGUFReader would do, but it builds
numpy views of every tokenizer string (20 s for Gemma's 262k vocabulary) and `devices` may not import
compress.gguf_file, so _read_header below walks the header itself (the GGUF spec's little-endian layout),
skipping arrays; tensor sizes come from gguf's own GGML_QUANT_SIZES.
ONNX: a model directory with model.onnx (+ external data) and genai_config.json (slimkit export onnx) or a
HF config.json.
"""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from devices.errors import DeviceError

KV_BYTES_PER_VALUE = 2  # llama.cpp's default KV cache type is F16 (type_k = type_v = f16)


@dataclass(frozen=True)
class ArtifactInfo:
    path: str
    format: str                 # "gguf" | "onnx"
    file_type: str              # "Q4_0", "Q4_K_M", "F16", ... ("onnx" for ONNX)
    file_bytes: int             # everything that is pushed to the target
    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_params: int
    weight_bytes: int           # all tensors
    decode_bytes: int           # weight bytes read to decode one token (the token-embedding lookup reads one row)
    matmul_params: int          # parameters in the per-layer matrices (2 FLOPs each per token)
    output_params: int          # the LM head (vocab x n_embd), computed once per prefill, per token in decode
    weight_bytes_by_type: dict[str, int]
    decode_bytes_by_type: dict[str, int] = None  # type: ignore[assignment]  # decode_bytes split by tensor type

    def __post_init__(self) -> None:
        if self.decode_bytes_by_type is None:
            object.__setattr__(self, "decode_bytes_by_type", dict(self.weight_bytes_by_type))

    def kv_bytes(self, ctx: int) -> int:
        """Bytes of K and V for `ctx` positions (all layers, F16)."""
        return 2 * self.n_layers * ctx * self.n_head_kv * self.head_dim * KV_BYTES_PER_VALUE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(path: str | Path) -> ArtifactInfo:
    path = Path(path)
    if path.is_dir() or path.suffix == ".onnx":
        return _describe_onnx(path if path.is_dir() else path.parent)
    if not path.is_file():
        raise DeviceError(f"{path}: no such artifact; give a .gguf file or an ONNX model directory")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise DeviceError(f"{path} is neither a GGUF file nor an ONNX model directory")
        try:
            meta, tensors = _read_header(fh)
        except (struct.error, ValueError, UnicodeDecodeError, KeyError) as exc:
            raise DeviceError(f"{path}: truncated or corrupt GGUF header ({exc}); export it again") from None
    return _from_gguf(path, meta, tensors)


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("unexpected end of file")
    return struct.unpack(fmt, data)[0]


def _read_str(fh: BinaryIO) -> str:
    n = _read(fh, "<Q")
    data = fh.read(n)
    if len(data) != n:
        raise ValueError("unexpected end of file in a string")
    return data.decode("utf-8")


def _read_value(fh: BinaryIO, vtype: int) -> Any:
    if vtype == _STRING:
        return _read_str(fh)
    if vtype == _ARRAY:  # skipped: only its length is kept (tokenizer vocabularies are large)
        etype, n = _read(fh, "<I"), _read(fh, "<Q")
        if etype == _STRING:
            for _ in range(n):
                fh.seek(_read(fh, "<Q"), 1)
        elif etype in _SCALAR:
            fh.seek(n * struct.calcsize(_SCALAR[etype]), 1)
        else:
            raise ValueError(f"unsupported array element type {etype}")
        return ("array", n)
    return _read(fh, _SCALAR[vtype])


def _read_header(fh: BinaryIO) -> tuple[dict[str, Any], list[tuple[str, list[int], int]]]:
    version = _read(fh, "<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    n_tensors, n_kv = _read(fh, "<Q"), _read(fh, "<Q")
    meta = {}
    for _ in range(n_kv):
        key = _read_str(fh)
        meta[key] = _read_value(fh, _read(fh, "<I"))
    tensors = []
    for _ in range(n_tensors):
        name = _read_str(fh)
        shape = [_read(fh, "<Q") for _ in range(_read(fh, "<I"))]
        ttype = _read(fh, "<I")
        _read(fh, "<Q")  # data offset
        tensors.append((name, shape, ttype))
    return meta, tensors


def _from_gguf(path: Path, meta: dict[str, Any], tensors: list[tuple[str, list[int], int]]) -> ArtifactInfo:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

    arch = meta.get("general.architecture")
    try:
        n_layers = int(meta[f"{arch}.block_count"])
        n_embd = int(meta[f"{arch}.embedding_length"])
        n_head = int(meta[f"{arch}.attention.head_count"])
    except KeyError as exc:
        raise DeviceError(f"{path}: GGUF metadata lacks {exc}; not a language model slimkit can profile") from None
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    head_dim = int(meta.get(f"{arch}.attention.key_length", n_embd // n_head))
    by_type: dict[str, int] = {}
    types: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}  # name -> (elements, bytes)
    for name, shape, ttype in tensors:
        qtype = GGMLQuantizationType(ttype)
        block, type_size = GGML_QUANT_SIZES[qtype]
        n = 1
        for d in shape:
            n *= int(d)
        nbytes = n // block * type_size
        sizes[name], types[name] = (n, nbytes), qtype.name
        by_type[qtype.name] = by_type.get(qtype.name, 0) + nbytes
    embd_n, embd_bytes = sizes.get("token_embd.weight", (0, 0))
    tied = "output.weight" not in sizes
    output_n = embd_n if tied else sizes["output.weight"][0]
    weight_bytes = sum(b for _, b in sizes.values())
    decode_by_type = dict(by_type)
    if not tied and embd_bytes:  # the lookup reads one row of the token-embedding table
        decode_by_type[types["token_embd.weight"]] -= embd_bytes
    matmul = sum(n for name, (n, _) in sizes.items() if name.startswith("blk.") and name.endswith(".weight")
                 and "norm" not in name)
    vocab = meta.get(f"{arch}.vocab_size") or (output_n // n_embd if n_embd else 0)
    ftype = meta.get("general.file_type")
    try:
        file_type = LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_").replace("ALL_", "")
    except (TypeError, ValueError):
        file_type = max(by_type, key=by_type.get) if by_type else "unknown"
    return ArtifactInfo(
        path=str(path), format="gguf", file_type=file_type, file_bytes=path.stat().st_size, arch=str(arch),
        n_layers=n_layers, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
        n_vocab=int(vocab), n_params=sum(n for n, _ in sizes.values()), weight_bytes=weight_bytes,
        decode_bytes=weight_bytes if tied else weight_bytes - embd_bytes, matmul_params=matmul,
        output_params=output_n, weight_bytes_by_type=by_type, decode_bytes_by_type=decode_by_type)


def _onnx_config(model_dir: Path) -> dict[str, Any] | None:
    """Architecture numbers from genai_config.json (slimkit export onnx; the FFN width and the exact parameter
    count from its slimkit_onnx.json) or a HF config.json."""
    genai, hf, info = model_dir / "genai_config.json", model_dir / "config.json", model_dir / "slimkit_onnx.json"
    try:
        if genai.is_file():
            m = json.loads(genai.read_text())["model"]
            d = m["decoder"]
            extra = json.loads(info.read_text()).get("model", {}) if info.is_file() else {}
            return {"file": d.get("filename", "model.onnx"), "arch": m.get("type", "unknown"),
                    "n_embd": d["hidden_size"], "n_layers": d["num_hidden_layers"], "n_head": d["num_attention_heads"],
                    "n_head_kv": d.get("num_key_value_heads", d["num_attention_heads"]), "head_dim": d["head_size"],
                    "vocab": m["vocab_size"], "inter": extra.get("intermediate_size"),
                    "n_params": extra.get("n_params")}
        if hf.is_file():
            c = json.loads(hf.read_text())
            c = c.get("text_config", c)
            n_head = c["num_attention_heads"]
            return {"file": "model.onnx", "arch": c.get("model_type", "unknown"), "n_embd": c["hidden_size"],
                    "n_layers": c["num_hidden_layers"], "n_head": n_head,
                    "n_head_kv": c.get("num_key_value_heads", n_head),
                    "head_dim": c.get("head_dim") or c["hidden_size"] // n_head, "vocab": c["vocab_size"],
                    "inter": c["intermediate_size"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise DeviceError(f"{model_dir}: unreadable model config ({exc}); export the model again") from None
    return None


def _describe_onnx(model_dir: Path) -> ArtifactInfo:
    cfg = _onnx_config(model_dir)
    onnx_file = model_dir / (cfg["file"] if cfg else "model.onnx")
    if not onnx_file.is_file():
        raise DeviceError(f"{model_dir}: no {onnx_file.name}; give the directory `slimkit export onnx` wrote")
    files = [p for p in model_dir.iterdir() if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    weight_bytes = sum(p.stat().st_size for p in files if p.suffix in (".onnx", ".data", ".onnx_data"))
    if cfg is None:  # sizes only: enough to push, run and check memory; no prediction
        return ArtifactInfo(path=str(model_dir), format="onnx", file_type="onnx", file_bytes=size, arch="unknown",
                            n_layers=0, n_embd=0, n_head=0, n_head_kv=0, head_dim=0, n_vocab=0, n_params=0,
                            weight_bytes=weight_bytes, decode_bytes=weight_bytes, matmul_params=0, output_params=0,
                            weight_bytes_by_type={"onnx": weight_bytes})
    n_embd, n_layers, hd = cfg["n_embd"], cfg["n_layers"], cfg["head_dim"]
    attn = n_embd * hd * (2 * cfg["n_head"] + 2 * cfg["n_head_kv"])
    matmul = n_layers * (attn + 3 * n_embd * cfg["inter"]) if cfg["inter"] else 0  # genai_config lacks the FFN width
    output = cfg["vocab"] * n_embd
    return ArtifactInfo(
        path=str(model_dir), format="onnx", file_type="onnx", file_bytes=size, arch=str(cfg["arch"]),
        n_layers=n_layers, n_embd=n_embd, n_head=cfg["n_head"], n_head_kv=cfg["n_head_kv"], head_dim=hd,
        n_vocab=cfg["vocab"], n_params=cfg.get("n_params") or (matmul + output if matmul else 0),
        weight_bytes=weight_bytes,
        decode_bytes=weight_bytes, matmul_params=matmul, output_params=output,
        weight_bytes_by_type={"onnx": weight_bytes})
