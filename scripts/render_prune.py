"""BENCHMARKS.md section for prune.json (numbers come from the file only)."""
from __future__ import annotations

from typing import Callable

HEADLINE = ("dense_ppl", "ppl_25_no_recovery", "ppl_25_recovered", "ppl_25_recovered_ratio", "recovery_seconds",
            "prune_75_seconds")


def _dims(shape: dict) -> str:
    return "/".join(str(shape.get(k, "?")) for k in ("layers", "hidden", "ffn", "heads", "kv_heads"))


def _calib_suffix(r: dict) -> str:
    return f" calib {r['calib']}" if r.get("calib", "tinystories") != "tinystories" else ""


def render_prune(doc: dict, header: Callable, table: Callable) -> list[str]:
    m = doc["metrics"]
    if m.get("rows") and "recover" not in m["rows"][0]:   # written before recovery existed
        return _legacy(doc, header, table)
    lines = [*header(doc, "Structured pruning, with and without least-squares recovery"), "",
             f"Perplexity right after pruning, no training: {m['ppl_protocol']}. Calibration: {m['calibration']}. "
             f"Shapes: {m['shape_protocol']}. Parameters counted: {m['params_counted']}. "
             f"Load average at the end: {m.get('loadavg')}.", "",
             " ".join(f"`{k}` = **{m[k]}**" for k in HEADLINE if k in m), "",
             "Dense: " + ", ".join(f"{k} ppl {v['dense_ppl']} (in-domain {v.get('dense_ppl_in_domain')})"
                                   for k, v in m.get("models", {}).items()) + ".", ""]
    if "ppl_25_recovered_row" in m:
        r = m["ppl_25_recovered_row"]
        lines += [f"Best recovered row at 25%: {r['method']} (recover {r['recover']}, target "
                  f"{r.get('recover_target') or 'dense'}, bridge {r['bridge']}, calibration "
                  f"{r.get('calib') or 'tinystories'}), "
                  f"shape {_dims(r['shape'])}.", ""]
    rows = [[r["model"], f"{r['removed_fraction']:.0%}", r["method"], r["recover"]
             + (f" ({r['recover_target']})" if r.get("recover_target") and r["recover"] == "ls" else ""),
             r.get("bridge") or "", r.get("calib", "tinystories"),
             _dims(r["shape"]), f"{r['params']:,}", r["ppl"], r.get("ppl_in_domain", ""), r["calib_loss_pruned"], r["calib_loss"],
             r.get("recovery_seconds") or "", r["prune_seconds"]] for r in m["rows"]]
    if any("measured_at_commit" in r for r in m["rows"]):
        lines += ["Rows marked * were measured at an earlier commit (their `measured_at_commit`); `ls-dense` is "
                  "least-squares recovery with dense targets, the default before local targets.", ""]
        for row, r in zip(rows, m["rows"]):
            if "measured_at_commit" in r:
                row[2] += " *"
    lines += table(["model", "removed", "method", "recover", "bridge", "calib", "shape (layers/hidden/ffn/heads/kv)",
                    "params", "ppl", "ppl in-domain", "calib loss pruned", "calib loss", "recovery s", "prune s"], rows)
    if m.get("not_run"):
        lines += ["", "Not run yet: " + "; ".join(f"{r['model']} {r['method']} {r['removed_fraction']:.0%} "
                                                  f"recover {r['recover']}"
                                                  + _calib_suffix(r) for r in m["not_run"]) + "."]
    return lines + [""]


def _legacy(doc: dict, header: Callable, table: Callable) -> list[str]:
    m = doc["metrics"]
    lines = [*header(doc, "Structured pruning"), "",
             f"Source: `{m['source']}`, {m['dense_params']:,} {m['params_counted']} parameters; dense perplexity "
             f"`dense_ppl` = {m['dense_ppl']}. Perplexity right after pruning, no training: {m['ppl_protocol']}. "
             f"Calibration: {m['calibration']}. Shapes: {m['shape_protocol']}.", ""]
    lines += table(["removed", "method", "shape (layers/hidden/ffn/heads/kv)", "params", "ppl"],
                   [[f"{r['removed_fraction']:.0%}", r["method"], _dims(r.get("shape", {})), f"{r['params']:,}", r["ppl"]]
                    for r in m["rows"]])
    return lines + [""]
