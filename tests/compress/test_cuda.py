"""CUDA paths (run where CUDA is present, skipped elsewhere; scripts/cuda_tests.sh runs them all):
GGUF block packing on the device, scales bit-exact with the CPU (no reciprocal multiplication),
and data-free sampling from a CUDA teacher."""
from __future__ import annotations

import pytest
import torch

from compress.quant import formats

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


@pytest.mark.parametrize("btype", TYPES)
def test_blocks_on_cuda_are_the_cpu_blocks_byte_for_byte(btype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-3, 2, 64).unsqueeze(1)
    codes_cpu, codes_gpu = formats.codes(w, btype), formats.codes(w.cuda(), btype)
    packed_cpu, packed_gpu = formats.pack(codes_cpu, btype), formats.pack(codes_gpu, btype)
    assert packed_gpu.device.type == "cuda"
    assert torch.equal(packed_cpu, packed_gpu.cpu())
    back = formats.unpack(packed_gpu, btype)
    assert back.q.device.type == "cuda" and torch.equal(back.q.cpu(), formats.unpack(packed_cpu, btype).q)


def test_data_free_sampling_from_a_cuda_teacher():
    from conftest import tiny_llama

    from compress.data import teacher_corpus

    ck = tiny_llama(0)
    cpu = teacher_corpus(ck.model, ck.tokenizer, 256, 32, 0.0, seed=3)
    gpu = teacher_corpus(ck.model.cuda(), ck.tokenizer, 256, 32, 0.0, seed=3)
    assert cpu.train.shape == gpu.train.shape
