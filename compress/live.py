"""In-memory checkpoints under a source name (`memory:<id>`), so the code that takes sources (the
distillation trainer, teachers, resume fingerprints) takes a model already in memory too: prune ->
distill in Python needs no save in between. `compress.checkpoint.load` returns the registered
object itself, not a copy: training a registered student changes it in place."""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator

from compress.errors import SlimkitError

PREFIX = "memory:"
_LIVE: dict[str, Any] = {}


def is_live(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


@contextlib.contextmanager
def registered(ckpt: Any) -> Iterator[str]:
    """A source name for `ckpt` (a compress.checkpoint.Checkpoint) while the block runs."""
    name = f"{PREFIX}{id(ckpt):x}"
    _LIVE[name] = ckpt
    try:
        yield name
    finally:
        _LIVE.pop(name, None)


def get(name: str) -> Any:
    try:
        return _LIVE[name]
    except KeyError:
        raise SlimkitError(f"{name}: an in-memory model that is no longer registered; pass the model itself "
                           "to the slimkit verb, or save it and give its directory") from None


def digest(name: str) -> str:
    """Content digest of a registered model's weights (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(get(name).model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
