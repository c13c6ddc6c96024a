"""Structured pruning (depth and width) of Llama-style and Gemma-3 decoders.

    from compress.prune import PruneConfig, prune
    result = prune("smollm2-135m-instruct", PruneConfig(target_params=0.75, calib="text.txt"))
    compress.checkpoint.save(result.checkpoint, "out/", stage=result.stage)

With calibration text, the pruned model is repaired by least squares (compress.prune.recover:
refits of pruned Linears, linear bridges over removed blocks); `recover="none"` turns it off.
`target_params` counts non-embedding parameters (blocks + final norm) unless `count_embeddings`;
a value in (0, 1] is the fraction of the model's count to keep, a value > 1 an absolute count.
"""
from __future__ import annotations

from compress.prune.api import Plan, PruneConfig, PruneResult, make_plan, prune

__all__ = ["Plan", "PruneConfig", "PruneResult", "make_plan", "prune"]
