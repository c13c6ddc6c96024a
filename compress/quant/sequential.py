"""Sequential GPTQ: decoder blocks quantized in order, each calibrated on what the blocks already
quantized hand it (the procedure of the GPTQ reference code, `llama_sequential`).

One forward pass per calibration window records the input of block 0 and the keyword arguments
every block receives (attention masks, rotary embeddings: per block, so sliding-window and global
layers of gemma3 keep their own). Then, block by block: run the block in full precision over the
current inputs while compress.calib collects its Linears' Gram matrices, GPTQ those Linears
(compress.quant.calibrated.quantize_model), run the quantized block to get the next block's
inputs. The output head is calibrated last on the final norm of the quantized stack. Cost: about
two forward passes over the calibration windows, plus the Gram matrices.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from compress.calib import CalibStats, Collector, capture, decoder_layers, run_block
from compress.errors import SlimkitError
from compress.quant.gptq import GPTQConfig
from compress.quant.qat import QuantizedWeights


def _block_stats(modules: dict[str, nn.Linear], run: Callable[[Callable[[], None]], Any]) -> CalibStats:
    collector = Collector(modules, gram=True)
    try:
        run(collector.end_window)
    finally:
        collector.close()
    return collector.stats


@torch.no_grad()
def sequential_quantize(model: nn.Module, windows: torch.Tensor, types: dict[str, str], method: str,
                        cfg: GPTQConfig = GPTQConfig(), progress: bool = True) -> QuantizedWeights:
    """GPTQ (`method` gptq or gptq+imatrix) of every weight in `types` ({HF weight name: type}),
    block by block; the weights become the blocks' values, the blocks are returned."""
    from compress.quant.calibrated import quantize_model

    was_training = model.training
    model.eval()
    layers = decoder_layers(model)
    xs, calls = capture(model, windows)
    result = QuantizedWeights(dict(types), {}, {"method": method, "sequential": True})
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(layers) + 1, desc="GPTQ", unit="block", leave=False)
    for i, layer in enumerate(layers):
        prefix = f"model.layers.{i}."
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        stats = _block_stats(linears, lambda after: run_block(layer, xs, calls[i], after))
        block_types = {k[len(prefix):]: t for k, t in types.items() if k.startswith(prefix)}
        if block_types:
            q = quantize_model(layer, block_types, stats, method, cfg)
            result.blocks.update({prefix + k: v for k, v in q.blocks.items()})
        xs = run_block(layer, xs, calls[i])  # the quantized block's outputs feed the next one
        if bar is not None:
            bar.update(1)
    rest = {k: t for k, t in types.items() if not k.startswith("model.layers.")}
    if rest:  # the embedding (reference blocks, as llama.cpp has no imatrix for it) and the output head
        head = getattr(model, "lm_head", None)
        embed = model.get_input_embeddings()
        if isinstance(head, nn.Linear) and head.weight is not embed.weight:
            norm = model.model.norm
            stats = _block_stats({"lm_head": head}, lambda after: [(head(norm(x)), after()) for x in xs])
            q = quantize_model(model, rest, stats, method, cfg)
        else:  # tied: the token embedding's blocks serve as the output too, quantized without statistics
            q = quantize_model(model, rest, None, "rtn")
        result.blocks.update(q.blocks)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return result
