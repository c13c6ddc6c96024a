"""Pruning benchmark: perplexity right after pruning (no training), with and without recovery.

Models smollm2-135m-instruct (fractions 0.1, 0.25, 0.4) and gemma3-270m (0.25); calibration on the
head of TinyStories train; perplexity in torch on WikiText-2 valid (16 windows of 512, the protocol
of `slimkit eval`). Per model and fraction of non-embedding parameters removed (calibration
`tinystories` unless the row says `calib: self`: text sampled from the model, `--calib self`):
- the shape is searched once with minitron scores and no recovery (as `slimkit prune --target-params
  --recover none` does), and every width method (minitron, taylor, magnitude, random) is applied to
  that same shape, with `recover` none and ls (least-squares refits, compress.prune.recover);
- block-influence (whole blocks, ShortGPT scores) with recover none; depth with linear bridges
  (`ls` and `cosine` objective; blocks chosen for bridging among contiguous spans and block scores);
- `search+ls`: the product path, `slimkit prune --target-params (1 - f) --calib ...` with recovery
  by default: its own calibration pass, the shape search over width and depth candidates, each
  repaired before it is ranked. Its wall time at 25% is `prune_75_seconds`;
- self-calibration rows: search+ls, minitron and block-influence (none and ls) on the model's own samples.
Rows are cached in build/bench_prune/<model>/rows.json, so an interrupted run continues;
`--cached-only` writes the result from the rows made so far and lists the rest as not run.

    .venv/bin/python scripts/bench_prune.py [--models ...] [--fractions 0.1 0.25 0.4] [--cached-only]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import REPO, RESULTS, SHARED_DATA, earlier_rows, write_result  # noqa: E402

MODELS = {"smollm2-135m-instruct": [0.10, 0.25, 0.40], "gemma3-270m": [0.25]}
CALIB = SHARED_DATA / "text" / "tinystories_train_head.txt.gz"
EVAL = SHARED_DATA / "text" / "wikitext2_v1_tokenized_valid.txt.gz"
IN_DOMAIN = SHARED_DATA / "text" / "tinystories_valid_head.txt.gz"   # held-out text of the calibration domain
IN_DOMAIN_WINDOWS = 8
WIDTH_METHODS = ("minitron", "taylor", "magnitude", "random")


RECOVER = {"none": {"recover": "none"}, "ls": {"recover": "ls", "recover_target": "local"},
           "ls-dense": {"recover": "ls", "recover_target": "dense"}}   # ls: the product default (local targets)


def _plan(frac: float) -> list[tuple[str, str, str, str]]:
    """(method, recover, bridge, calib) rows at one fraction."""
    # the headline rows first (minitron, depth, the product path), then the other importance criteria
    rows = [("minitron", r, "ls") for r in ("none", "ls")]
    rows += [("block-influence", "none", "ls"), ("block-influence", "ls", "ls"), ("block-influence", "ls", "cosine"),
             ("search+ls", "ls", "ls")]
    if frac == 0.25:   # local against dense targets, at the headline fraction
        rows += [("minitron", "ls-dense", "ls"), ("block-influence", "ls-dense", "ls")]
    rows = [(*r, "tinystories") for r in rows + [(m, r, "ls") for m in WIDTH_METHODS[1:] for r in ("none", "ls")]]
    # self-calibration (`--calib self`): the headline methods, with and without recovery
    return rows + [(m, r, "ls", "self") for m in ("search+ls", "minitron", "block-influence")
                   for r in (("ls",) if m == "search+ls" else ("none", "ls"))]


def _key(method: str, frac: float, recover: str, bridge: str, calib: str = "tinystories") -> str:
    return f"{method}|{frac:g}|{recover}|{bridge}" + ("" if calib == "tinystories" else f"|{calib}")


class Rows:
    def __init__(self, path: Path, model: str) -> None:
        self.path = path
        self.rows: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else _earlier(model)

    def put(self, key: str, row: dict) -> None:
        self.rows[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rows, indent=1))
        os.replace(tmp, self.path)


def _earlier(model: str) -> dict[str, dict]:
    """The rows of the previous benchmarks/results/prune.json, for a run whose work directory is
    gone (each keeps `measured_at_commit`). Rows measured before local targets existed used the
    dense target: they are the `ls-dense` rows."""
    commit, rows = earlier_rows("prune")
    if not rows:
        return {}
    doc = json.loads((RESULTS / "prune.json").read_text())["metrics"]
    out: dict[str, dict] = {}
    if model in doc.get("models", {}):
        m = doc["models"][model]
        out["dense"] = {"ppl": m["dense_ppl"], "ppl_in_domain": m.get("dense_ppl_in_domain"),
                        "measured_at_commit": m.get("measured_at_commit", commit)}
        out["score_seconds"] = m.get("score_seconds", {})
    for r in rows:
        if r.get("model") != model:
            continue
        recover = r["recover"]
        if recover == "ls" and "recover_target" not in r:
            recover = "ls-dense"
            r = {**r, "recover": recover, "recover_target": "dense"}
        key = _key(r["method"], r["removed_fraction"], recover, r.get("bridge") or "ls", r.get("calib", "tinystories"))
        out[key] = {**r, "measured_at_commit": r.get("measured_at_commit", commit)}
    return out


def run_model(name: str, fractions: list[float], args, rows: Rows) -> None:
    import torch

    from compress.checkpoint import load
    from compress.evaluate import read_text, torch_perplexity
    from compress.prune import PruneConfig, prune
    from compress.prune.api import calibration_windows
    from compress.prune.importance import score

    todo = [(f, *p) for f in fractions for p in _plan(f) if _key(p[0], f, *p[1:]) not in rows.rows]
    if not todo and "dense" in rows.rows:
        return
    torch.manual_seed(0)
    dense = load(name)
    text, in_domain = read_text(EVAL), read_text(IN_DOMAIN)

    def ppl(model) -> float:
        return round(torch_perplexity(model, dense.tokenizer, text, ctx=512, max_chunks=args.windows).ppl, 4)

    def ppl_in_domain(model) -> float:
        return round(torch_perplexity(model, dense.tokenizer, in_domain, ctx=512, max_chunks=IN_DOMAIN_WINDOWS).ppl, 4)

    if "dense" not in rows.rows:
        rows.put("dense", {"ppl": ppl(dense.model), "ppl_in_domain": ppl_in_domain(dense.model)})
    print(f"{name}: dense ppl {rows.rows['dense']['ppl']}", flush=True)
    calibs = {"tinystories": str(CALIB), "self": "self"}
    windows: dict[str, object] = {}
    scores: dict[tuple[str, str], object] = {}
    shapes: dict[tuple[float, str], dict] = {}

    def scores_for(method: str, calib: str):
        if calib not in windows:
            windows[calib] = calibration_windows(PruneConfig(method="minitron", target_params=1.0, calib=calibs[calib],
                                                             calib_tokens=args.calib_tokens), dense.tokenizer,
                                                 dense.model)
        if (method, calib) not in scores:
            t = time.perf_counter()
            scores[method, calib] = score(dense.model, method, windows[calib], progress=False)
            key = method if calib == "tinystories" else f"{method} ({calib})"
            rows.rows.setdefault("score_seconds", {})[key] = round(time.perf_counter() - t, 2)
        return scores[method, calib]

    for frac, method, recover, bridge, calib in todo:
        keep = round(1 - frac, 6)
        base = dict(calib=calibs[calib], calib_tokens=args.calib_tokens)
        start = time.perf_counter()
        if method == "search+ls":   # the product path: everything inside prune(), timed
            res = prune(copy.deepcopy(dense), PruneConfig(method="minitron", target_params=keep, **base),
                        progress=False)
        elif method == "block-influence":
            res = prune(copy.deepcopy(dense), PruneConfig(method=method, target_params=keep, bridge=bridge,
                                                          **RECOVER[recover], **base),
                        scores=scores_for(method, calib), progress=False)
        else:
            if (frac, calib) not in shapes:
                search = prune(copy.deepcopy(dense), PruneConfig(method="minitron", target_params=keep, recover="none",
                                                                 **base), scores=scores_for("minitron", calib),
                               plan_only=True, progress=False)
                shapes[frac, calib] = search.plan.shape.as_dict()
            res = prune(copy.deepcopy(dense), PruneConfig(method=method, shape=shapes[frac, calib], **RECOVER[recover],
                                                          **base), scores=scores_for(method, calib), progress=False)
        seconds = time.perf_counter() - start
        m = res.stage["metrics"]
        row = {"model": name, "method": method, "removed_fraction": frac, "recover": recover, "calib": calib,
               "bridge": bridge if method in ("block-influence", "search+ls") and recover != "none" else None,
               "recover_target": RECOVER[recover].get("recover_target"),
               "params": res.plan.params, "actual_removed_fraction": round(res.plan.removed_fraction, 4),
               "shape": res.plan.shape.as_dict(), "layers": res.stage["kept"]["layers"],
               "ppl": ppl(res.checkpoint.model), "ppl_in_domain": ppl_in_domain(res.checkpoint.model),
               "calib_loss": round(m["calib_loss"], 4),
               "calib_loss_pruned": round(m.get("calib_loss_pruned", m["calib_loss"]), 4),
               "recovery_seconds": m.get("recovery_seconds"), "prune_seconds": round(seconds, 2)}
        if "recovery" in res.stage:
            row["bridges"] = [{k: b.get(k) for k in ("removed", "applied", "rel_err_before", "rel_err_after")}
                              for b in res.stage["recovery"]["bridges"]]
        if method == "search+ls":
            row["candidates"] = res.plan.to_dict()["candidates"]
        rows.put(_key(method, frac, recover, bridge, calib), row)
        print({k: v for k, v in row.items() if k != "candidates"}, flush=True)
        del res


def summarize(args) -> dict:
    """The result over every model and fraction of the protocol (and any extra fraction run), so a
    run restricted by --models/--fractions still writes the whole file (other rows: cached)."""
    out: dict = {"models": {}, "rows": [], "not_run": []}
    report = {m: sorted(set(MODELS[m]) | set(args.models.get(m, []))) for m in MODELS}
    for name, fractions in report.items():
        rows = Rows(args.work / name / "rows.json", name)
        if "dense" in rows.rows:
            out["models"][name] = {"dense_ppl": rows.rows["dense"]["ppl"],
                                   **({"measured_at_commit": rows.rows["dense"]["measured_at_commit"]}
                                      if "measured_at_commit" in rows.rows["dense"] else {}),
                                   "dense_ppl_in_domain": rows.rows["dense"].get("ppl_in_domain"),
                                   "score_seconds": rows.rows.get("score_seconds", {})}
        for f in fractions:
            for method, recover, bridge, calib in _plan(f):
                r = rows.rows.get(_key(method, f, recover, bridge, calib))
                if r is None:
                    out["not_run"].append({"model": name, "method": method, "removed_fraction": f, "recover": recover,
                                           "bridge": bridge, "calib": calib})
                else:
                    out["rows"].append(r)
    main_model = "smollm2-135m-instruct"
    at25 = [r for r in out["rows"] if r["model"] == main_model and r["removed_fraction"] == 0.25]
    plain = [r for r in at25 if r["recover"] == "none"]
    fixed = [r for r in at25 if r["recover"] != "none"]
    if main_model in out["models"]:
        out["dense_ppl"] = out["models"][main_model]["dense_ppl"]
    if plain:
        out["ppl_25_no_recovery"] = min(r["ppl"] for r in plain)
    if fixed:
        best = min(fixed, key=lambda r: r["ppl"])
        out["ppl_25_recovered"] = best["ppl"]
        out["recovery_seconds"] = best["recovery_seconds"]
        out["ppl_25_recovered_row"] = {k: best.get(k, "tinystories" if k == "calib" else None)
                                       for k in ("method", "recover", "recover_target", "bridge", "calib", "shape")}
        if "dense_ppl" in out:
            out["ppl_25_recovered_ratio"] = round(best["ppl"] / out["dense_ppl"], 3)
    product = [r for r in at25 if r["method"] == "search+ls" and r.get("calib", "tinystories") == "tinystories"]
    if product:
        out["prune_75_seconds"] = product[0]["prune_seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--fractions", type=float, nargs="+", default=None, help="override every model's fractions")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench_prune")
    ap.add_argument("--cached-only", action="store_true", help="write the result from the rows made so far")
    args = ap.parse_args()
    args.models = {m: args.fractions or MODELS[m] for m in args.models}
    for f in (CALIB, EVAL):
        if not f.is_file():
            sys.exit(f"bench_prune: {f} is missing (needs ../shared/data)")
    warnings.filterwarnings("ignore")
    if not args.cached_only:
        for name, fractions in args.models.items():
            run_model(name, fractions, args, Rows(args.work / name / "rows.json", name))
    write_result("prune", {
        **summarize(args),
        "params_counted": "non-embedding (blocks + final norm)",
        "ppl_protocol": f"torch, {args.windows} windows of 512 tokens of {EVAL.name}; `ppl_in_domain`: "
                        f"{IN_DOMAIN_WINDOWS} windows of {IN_DOMAIN.name} (held-out text of the TinyStories "
                        "calibration's domain)",
        "calibration": f"{args.calib_tokens} tokens in windows of 512 (recovery: the first 8192) of {CALIB.name} "
                       "(calib tinystories) or sampled from the model itself, seed 0, T=1 (calib self: "
                       "`slimkit prune --calib self`)",
        "shape_protocol": "per fraction, minitron shape search (no recovery) over depth/width candidates by "
                          "calibration loss; taylor, magnitude and random pruned to that same shape; block-influence "
                          "removes blocks to the same target; search+ls is the full `slimkit prune` path with recovery",
        "loadavg": list(os.getloadavg()),
    })


if __name__ == "__main__":
    main()
