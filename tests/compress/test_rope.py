"""Llama 3 RoPE scaling read back from llama.cpp's rope_freqs factors."""
from __future__ import annotations

import numpy as np
import pytest

from compress.errors import SlimkitError
from compress.rope import llama3_factors, llama3_parameters


@pytest.mark.parametrize("rope, dim", [
    ({"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
      "rope_theta": 500000.0}, 64),     # Llama 3.2 1B
    ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
      "rope_theta": 500000.0}, 16),     # the tiny test model
    ({"factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0, "original_max_position_embeddings": 4096,
      "rope_theta": 10000.0}, 128),     # not the Llama 3 triple: solved, not a preset
])
def test_the_scaling_is_recovered_from_its_factors(rope, dim):
    factors = llama3_factors(rope, dim).astype(np.float32)
    got = llama3_parameters(factors, rope["rope_theta"], dim)
    assert got["rope_type"] == "llama3" and got["factor"] == pytest.approx(rope["factor"])
    np.testing.assert_allclose(llama3_factors(got, dim), factors, rtol=1e-5)


def test_unscaled_and_foreign_factors():
    assert llama3_parameters(np.ones(32, np.float32), 10000.0, 64) is None
    with pytest.raises(SlimkitError, match="not a Llama 3 RoPE scaling"):
        llama3_parameters(np.linspace(1, 8, 32).astype(np.float32)[::-1].copy(), 10000.0, 64)
    with pytest.raises(SlimkitError, match="damaged"):
        llama3_parameters(np.ones(5, np.float32), 10000.0, 64)
