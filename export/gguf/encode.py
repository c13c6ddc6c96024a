"""torch tensor -> (numpy array, raw dtype) that gguf.GGUFWriter.add_tensor stores as is."""
from __future__ import annotations

import numpy as np
import torch

from compress.quant import formats
from export.gguf.types import Q


def encode(tensor: torch.Tensor, qtype: Q) -> tuple[np.ndarray, Q | None]:
    t = tensor.detach().to(torch.float32).contiguous()
    if qtype is Q.F32:
        return t.numpy(), None
    if qtype is Q.F16:
        return t.to(torch.float16).numpy(), None
    if qtype is Q.BF16:
        # numpy has no bfloat16: hand the writer raw bytes, (rows, cols * 2) uint8
        raw = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
        return raw, Q.BF16
    if qtype.name in formats.PACKED_TYPES:  # the block types compress.quant.formats packs
        return formats.quantize(t, qtype.name).numpy(), qtype
    raise ValueError(f"slimkit does not pack {qtype.name} itself")
