"""report.md and a self-contained report.html for a run directory (plots: matplotlib, PNG inline).

One row per artifact (GGUF file or ONNX directory) and per source model evaluated: parameters,
file MB, perplexity, decode tokens/s measured here and predicted per device profile, whether it
fits in each device's memory; a Pareto plot (file size against perplexity, coloured by measured
decode speed) and the training loss curves of the distill and qat stages.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from compress.atomic import atomic_write


def _decode_tps(record: dict[str, Any]) -> float | None:
    """Decode tokens/s of a prediction, or of a measurement (devices.profile.summarize's headline)."""
    if record.get("kind") == "prediction":
        return record.get("decode_tps")
    return (record.get("summary") or {}).get("decode_tps")


def artifact_rows(manifest: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """One dict per artifact or evaluated model, merged from the export, eval and profile stages."""
    rows: dict[str, dict[str, Any]] = {}
    stages = sorted((v for k, v in manifest["stages"].items() if not k.startswith("_")), key=lambda v: v.get("index", 0))
    for st in stages:
        if st.get("status") != "finished":
            continue
        m = st.get("metrics", {})
        if st["kind"] in ("export-gguf", "export-onnx"):
            path = str(run_dir / st["output"])
            row = rows.setdefault(path, {"artifact": st["output"]})
            row["file_mb"] = m.get("file_mb")
            row["params"] = _params(Path(path))
        elif st["kind"] == "eval":
            for target, res in m.items():
                row = rows.setdefault(target, {"artifact": _short(target, run_dir)})
                row["ppl"] = res.get("ppl")
                row["runtime"] = res.get("runtime")
        elif st["kind"] == "profile":
            for key, rec in m.items():
                target, _, device = key.rpartition("@")
                row = rows.setdefault(target, {"artifact": _short(target, run_dir)})
                tps = _decode_tps(rec)
                if rec.get("kind") == "prediction":
                    row.setdefault("predicted", {})[device] = {
                        "decode_tps": tps, "fits": (rec.get("memory") or {}).get("fits")}
                else:
                    row["decode_tps"] = tps
    return list(rows.values())


def _params(path: Path) -> int | None:
    """Parameters stored in a GGUF file or ONNX directory (tied embeddings counted once)."""
    from devices.artifact import describe

    try:
        return describe(path).n_params or None
    except Exception:  # noqa: BLE001 (a report never fails on one unreadable artifact)
        return None


def _short(target: str, run_dir: Path) -> str:
    return target[len(str(run_dir)) + 1:] if target.startswith(str(run_dir)) else target


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def pareto_png(rows: list[dict[str, Any]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.get("file_mb") and r.get("ppl")]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    timed = [r for r in pts if r.get("decode_tps")]
    untimed = [r for r in pts if not r.get("decode_tps")]
    if timed:
        sc = ax.scatter([r["file_mb"] for r in timed], [r["ppl"] for r in timed],
                        c=[r["decode_tps"] for r in timed], cmap="viridis", s=60, zorder=3)
        fig.colorbar(sc, label="decode tokens/s (measured here)")
    if untimed:
        ax.scatter([r["file_mb"] for r in untimed], [r["ppl"] for r in untimed], c="lightgray", edgecolors="gray",
                   s=60, zorder=3, label="speed not measured")
        ax.legend(fontsize=7)
    front, best = [], float("inf")  # the Pareto front: no smaller file has a lower perplexity
    for r in sorted(pts, key=lambda r: (r["file_mb"], r["ppl"])):
        if r["ppl"] < best:
            front.append(r)
            best = r["ppl"]
    ax.step([r["file_mb"] for r in front], [r["ppl"] for r in front], where="post", color="gray", lw=0.8, zorder=2)
    for r in pts:
        ax.annotate(Path(r["artifact"]).parent.name or r["artifact"], (r["file_mb"], r["ppl"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("size vs perplexity (line: Pareto front)")
    out = _png(fig)
    plt.close(fig)
    return out


def loss_png(manifest: dict[str, Any], run_dir: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for name, st in manifest["stages"].items():
        log = run_dir / st.get("output", "-") / "train_log.jsonl"
        if st.get("kind") in ("distill", "qat") and log.is_file():
            recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            curves[name] = [(r["tokens"], r["loss"]) for r in recs if "loss" in r and "tokens" in r]
    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("training loss")
    out = _png(fig)
    plt.close(fig)
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    devices = sorted({d for r in rows for d in r.get("predicted", {})})
    header = ["artifact", "params", "file MB", "ppl", "decode tok/s (here)",
              *[f"{d}: tok/s (predicted), fits" for d in devices]]
    body = []
    for r in rows:
        pred = r.get("predicted", {})
        body.append([r["artifact"], _fmt(r.get("params")), _fmt(r.get("file_mb")), _fmt(r.get("ppl"), 3),
                     _fmt(r.get("decode_tps"), 1),
                     *[f"{_fmt(pred[d]['decode_tps'], 1)}, {_fmt(pred[d]['fits'])}" if d in pred else "-"
                       for d in devices]])
    return header, body


def write_report(run_dir: Path) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = artifact_rows(manifest, run_dir)
    header, body = table(rows)
    stages = sorted((k, v) for k, v in manifest["stages"].items() if not k.startswith("_"))
    stage_rows = [[k, v.get("kind", ""), v.get("status", ""), _fmt(v.get("seconds"), 1)]
                  for k, v in sorted(stages, key=lambda kv: kv[1].get("index", 0))]
    pareto, loss = pareto_png(rows), loss_png(manifest, run_dir)
    md = [f"# slimkit run: {run_dir.name}", "", f"Recipe `{manifest.get('recipe')}`, teacher "
          f"`{manifest.get('teacher')}`, wall {manifest.get('wall_seconds', '-')} s.", "", "## Artifacts", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *["| " + " | ".join(r) + " |" for r in body], "",
          "Predicted speeds are predictions (devices/predict.py, calibrated on measured runs), not measurements.",
          "", "## Stages", "", "| stage | kind | status | seconds |", "|---|---|---|---|",
          *["| " + " | ".join(r) + " |" for r in stage_rows], ""]
    for title, png, name in (("Size vs perplexity", pareto, "pareto.png"), ("Training loss", loss, "loss.png")):
        if png:
            atomic_write(run_dir / name, base64.b64decode(png))
            md += [f"## {title}", "", f"![{title}]({name})", ""]
    md_path = run_dir / "report.md"
    atomic_write(md_path, "\n".join(md).encode())

    def html_table(head: list[str], rows_: list[list[str]]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows_)
        return f"<table><tr>{th}</tr>{trs}</table>"

    imgs = "".join(f"<h2>{t}</h2><img alt='{t}' src='data:image/png;base64,{p}'/>"
                   for t, p in (("Size vs perplexity", pareto), ("Training loss", loss)) if p)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>slimkit run {html.escape(run_dir.name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>slimkit run: {html.escape(run_dir.name)}</h1><p>Recipe {html.escape(str(manifest.get('recipe')))}, "
            f"teacher {html.escape(str(manifest.get('teacher')))}.</p><h2>Artifacts</h2>{html_table(header, body)}"
            "<p>Predicted speeds are predictions, not measurements.</p>"
            f"<h2>Stages</h2>{html_table(['stage', 'kind', 'status', 'seconds'], stage_rows)}{imgs}</body></html>")
    html_path = run_dir / "report.html"
    atomic_write(html_path, page.encode())
    return md_path, html_path
