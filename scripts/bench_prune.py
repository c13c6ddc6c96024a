"""Pruning benchmark: perplexity right after pruning (no training), per method and amount removed.

Model smollm2-135m-instruct; calibration on the head of TinyStories train; perplexity on WikiText-2
valid (16 windows of 512, the protocol of `slimkit eval`). For each fraction of non-embedding
parameters removed, the shape is searched once with the minitron scores (calibration loss over the
depth/width candidates, as `slimkit prune --target-params` does), and every width method is
applied to that same shape, so the rows compare importance criteria at equal shape;
block-influence removes whole blocks to the same target.

    .venv/bin/python scripts/bench_prune.py [--fractions 0.1 0.25 0.4] [--calib-tokens 8192]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import SHARED_DATA, write_result  # noqa: E402

SOURCE = "smollm2-135m-instruct"
CALIB = SHARED_DATA / "text" / "tinystories_train_head.txt.gz"
EVAL = SHARED_DATA / "text" / "wikitext2_v1_tokenized_valid.txt.gz"
WIDTH_METHODS = ("minitron", "taylor", "magnitude", "random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.10, 0.25, 0.40])
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--windows", type=int, default=16)
    args = ap.parse_args()
    for f in (CALIB, EVAL):
        if not f.is_file():
            sys.exit(f"bench_prune: {f} is missing (needs ../shared/data)")
    warnings.filterwarnings("ignore")

    import torch

    from compress.checkpoint import load
    from compress.evaluate import read_text, torch_perplexity
    from compress.prune import PruneConfig, prune
    from compress.prune.importance import score
    from compress.prune.api import calibration_windows

    torch.manual_seed(0)
    dense = load(SOURCE)
    text = read_text(EVAL)

    def ppl(model) -> float:
        return round(torch_perplexity(model, dense.tokenizer, text, ctx=512, max_chunks=args.windows).ppl, 4)

    dense_ppl = ppl(dense.model)
    print(f"dense ppl {dense_ppl}", flush=True)
    base = dict(calib=str(CALIB), calib_tokens=args.calib_tokens)
    windows = calibration_windows(PruneConfig(method="minitron", target_params=1.0, **base), dense.tokenizer)
    scores, score_seconds = {}, {}
    for method in WIDTH_METHODS + ("block-influence",):
        t = time.perf_counter()
        scores[method] = score(dense.model, method, windows, progress=False)
        score_seconds[method] = round(time.perf_counter() - t, 2)
        print(f"scored {method} in {score_seconds[method]} s", flush=True)

    rows, searches = [], []
    for frac in args.fractions:
        keep = round(1 - frac, 6)
        t = time.perf_counter()
        res = prune(copy.deepcopy(dense), PruneConfig(method="minitron", target_params=keep, **base),
                    scores=scores["minitron"], progress=False)
        shape = res.plan.shape.as_dict()
        searches.append({"removed_fraction": frac, "seconds": round(time.perf_counter() - t, 2), **res.plan.to_dict()})
        results = {"minitron": res}
        for method in WIDTH_METHODS[1:]:
            results[method] = prune(copy.deepcopy(dense), PruneConfig(method=method, shape=shape, **base),
                                    scores=scores[method], progress=False)
        results["block-influence"] = prune(copy.deepcopy(dense), PruneConfig(method="block-influence",
                                           target_params=keep, **base), scores=scores["block-influence"],
                                           progress=False)
        for method, r in results.items():
            row = {"method": method, "removed_fraction": frac, "params": r.plan.params, "ppl": ppl(r.checkpoint.model),
                   "actual_removed_fraction": round(r.plan.removed_fraction, 4), "shape": r.plan.shape.as_dict(),
                   "calib_loss": round(r.stage["metrics"]["calib_loss"], 4)}
            rows.append(row)
            print(row, flush=True)
            del r.checkpoint.model
    write_result("prune", {
        "source": SOURCE, "dense_ppl": dense_ppl, "rows": rows,
        "dense_params": searches[0]["dense_params"] if searches else None,
        "params_counted": "non-embedding (blocks + final norm)",
        "ppl_protocol": f"{args.windows} windows of 512 tokens of {EVAL.name}",
        "calibration": f"{args.calib_tokens} tokens of {CALIB.name} in windows of 512",
        "shape_protocol": "per fraction, minitron shape search over depth/width candidates by calibration loss; "
                          "taylor, magnitude and random pruned to that same shape; block-influence removes blocks "
                          "to the same target",
        "searches": searches, "score_seconds": score_seconds, "loadavg": list(os.getloadavg()),
    })


if __name__ == "__main__":
    main()
