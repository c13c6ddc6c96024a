"""Training data: text / jsonl / chat jsonl files -> token windows of a fixed length; or, with no
data at all, a corpus sampled from the teacher (data-free distillation, as in LLM-QAT).

Windows are a (N, seq_len) int64 tensor. Documents are concatenated with EOS between them and
cut into windows (packing); the tail that does not fill a window is dropped. When the tokenizer
adds BOS to a plain encode, every window starts with BOS (compress.evaluate's protocol).
`Corpus.sha256` hashes the token ids, so anything built from the windows (the logit cache) can
check that it belongs to them.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from compress.errors import SlimkitError
from compress.evaluate import adds_bos, read_text, tokenize_plain


@dataclass
class Corpus:
    train: torch.Tensor  # (N, seq_len) int64
    heldout: torch.Tensor  # (M, seq_len) int64
    source: str  # what it was built from, for the history
    # Per-token loss weights of the target at each position (N, seq_len) float32, for corpora of
    # prompt -> target examples (0 on prompts and padding); None = plain language modelling.
    train_weights: torch.Tensor | None = None
    heldout_weights: torch.Tensor | None = None

    @property
    def sha256(self) -> str:
        return windows_sha256(self.train, self.heldout)


def windows_sha256(*windows: torch.Tensor | None) -> str:
    """Token windows (and float weight tensors, hashed as float32) -> sha256."""
    digest = hashlib.sha256()
    for w in windows:
        if w is None:
            continue
        digest.update(str(tuple(w.shape)).encode())
        dtype = torch.float32 if w.is_floating_point() else torch.int32
        digest.update(w.to(dtype).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _jsonl_records(path: Path, text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SlimkitError(f"{path}:{number} is not valid JSON ({exc.msg}); "
                               "give one JSON object per line") from None
        if not isinstance(record, dict):
            raise SlimkitError(f"{path}:{number} is not a JSON object; give one object per line")
        yield number, record


def read_documents(path: str | Path, tokenizer: Any, text_field: str = "text") -> list[str]:
    """The documents of one file: a text file (.gz accepted) is one document; a .jsonl file gives
    one document per line from `text_field`, or from `messages` (a chat, rendered with the
    tokenizer's chat template)."""
    path = Path(path)
    text = read_text(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if not suffixes or suffixes[-1] not in (".jsonl", ".json"):
        return [text]
    docs = []
    for number, record in _jsonl_records(path, text):
        if isinstance(record.get(text_field), str):
            docs.append(record[text_field])
        elif isinstance(record.get("messages"), list):
            docs.append(render_chat(tokenizer, record["messages"], f"{path}:{number}"))
        else:
            raise SlimkitError(f"{path}:{number} has neither a {text_field!r} string nor a 'messages' list; "
                               f"give {{\"{text_field}\": ...}} or {{\"messages\": [{{\"role\": ..., \"content\": ...}}]}}")
    return docs


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], where: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise SlimkitError(f"{where} is a chat, but the student's tokenizer has no chat template; "
                           "give plain text or a tokenizer with chat_template")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:  # jinja2 errors for malformed messages
        raise SlimkitError(f"{where}: cannot render the chat ({exc}); each message needs 'role' and 'content'") from None


def pack(docs: Sequence[Sequence[int]], seq_len: int, eos_id: int | None, bos_id: int | None = None) -> torch.Tensor:
    """Concatenate token lists (EOS after each) and cut into (N, seq_len) windows; with bos_id,
    each window is BOS + seq_len - 1 stream tokens."""
    stream: list[int] = []
    for doc in docs:
        stream.extend(doc)
        if eos_id is not None:
            stream.append(eos_id)
    body = seq_len - (bos_id is not None)
    n = len(stream) // body
    if n == 0:
        raise SlimkitError(f"the data has {len(stream)} tokens, fewer than one window of {seq_len}; "
                           "give more text or a smaller --seq-len")
    windows = torch.tensor(stream[:n * body], dtype=torch.long).view(n, body)
    if bos_id is not None:
        windows = torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), windows], dim=1)
    return windows


def split_heldout(windows: torch.Tensor, heldout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random held-out slice (at least one window when there are two or more)."""
    n = windows.shape[0]
    m = min(n - 1, max(1, math.ceil(n * heldout_fraction))) if heldout_fraction > 0 and n > 1 else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return windows[order[m:].sort().values], windows[order[:m].sort().values]


def load_corpus(paths: Sequence[str | Path], tokenizer: Any, seq_len: int, heldout_fraction: float = 0.05,
                seed: int = 0, text_field: str = "text") -> Corpus:
    """Text / jsonl / chat-jsonl files -> packed windows with a held-out slice."""
    docs: list[list[int]] = []
    for path in paths:
        docs += [tokenize_plain(tokenizer, d) for d in read_documents(path, tokenizer, text_field)]
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    windows = pack(docs, seq_len, tokenizer.eos_token_id, bos)
    train, heldout = split_heldout(windows, heldout_fraction, seed)
    return Corpus(train, heldout, ", ".join(str(p) for p in paths))


def _first_tokens(tokenizer: Any, n: int, rng: random.Random) -> list[int]:
    """LLM-QAT starts each sample from a random vocabulary token (special tokens excluded)."""
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    return [rng.choice(vocab) for _ in range(n)]


@torch.no_grad()
def teacher_corpus(model: Any, tokenizer: Any, max_tokens: int, seq_len: int, heldout_fraction: float = 0.05,
                   seed: int = 0, batch_size: int = 4, temperature: float = 1.0, progress: bool = False) -> Corpus:
    """Data-free corpus: sample sequences from the teacher until `max_tokens` tokens, then pack.

    Each sequence starts from a random token and is sampled (multinomial at `temperature`) up to
    seq_len tokens or EOS; seeded, so the same call gives the same corpus."""
    if max_tokens < seq_len:
        raise SlimkitError(f"the data-free token cap {max_tokens} is below one window of {seq_len} tokens")
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    docs: list[list[int]] = []
    total = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_tokens, desc="sampling teacher corpus", unit="tok")
    while total < max_tokens:
        ids = torch.tensor(_first_tokens(tokenizer, batch_size, rng)).unsqueeze(1)  # (B, 1)
        for seq in _sample(model, ids, seq_len, temperature, gen, tokenizer.eos_token_id):
            docs.append(seq)
            total += len(seq) + 1
            if bar is not None:
                bar.update(len(seq) + 1)
    if bar is not None:
        bar.close()
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    train, heldout = split_heldout(pack(docs, seq_len, tokenizer.eos_token_id, bos), heldout_fraction, seed)
    return Corpus(train, heldout, f"sampled from the teacher (seed {seed}, {max_tokens} tokens, T={temperature})")


def _sample(model: Any, ids: torch.Tensor, length: int, temperature: float, gen: torch.Generator,
            eos_id: int | None) -> list[list[int]]:
    """Ancestral sampling with the KV cache; sequences are cut at their first EOS. The model runs on
    its own device; the draws are made on the CPU with the seeded CPU generator, so a CUDA teacher
    samples like a CPU one (up to its logits)."""
    device = next(model.parameters()).device
    out = model(input_ids=ids.to(device), use_cache=True)
    past, seqs = out.past_key_values, ids.cpu()
    ended = torch.zeros(len(ids), dtype=torch.bool)
    for _ in range(length - 1):
        probs = torch.softmax(out.logits[:, -1].float().cpu() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=gen)  # (B, 1) on the CPU
        seqs = torch.cat([seqs, nxt], dim=1)
        if eos_id is not None:
            ended |= nxt[:, 0] == eos_id
            if bool(ended.all()):   # every row is cut at its first EOS: the rest would be thrown away
                break
        out = model(input_ids=nxt.to(device), past_key_values=past, use_cache=True)
        past = out.past_key_values
    result = []
    for row in seqs.tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id)]
        if row:
            result.append(row)
    return result
