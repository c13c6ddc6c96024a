"""The default job until the pipeline issue lands: bundled SmolLM2 -> validated Q8_0 and Q4_K_M
GGUFs, perplexity against the torch model, an Ollama package, a summary table."""
from __future__ import annotations

import json
import time
from pathlib import Path

from compress.checkpoint import load
from compress.evaluate import read_text, torch_perplexity
from export.validate import VALIDATION_TEXT

SHARED_TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "wikitext2_v1_tokenized_valid.txt.gz"
DEMO_TYPES = ("Q8_0", "Q4_K_M")


def run_demo(out_dir: Path, source: str = "smollm2-135m-instruct", text: Path | None = None,
             max_chunks: int = 8) -> int:
    from export import ollama
    from export.gguf.writer import export_gguf
    from export.runtime import gguf_perplexity

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if text is None and SHARED_TEXT.is_file():
        text = SHARED_TEXT
    corpus = read_text(text) if text else VALIDATION_TEXT * 40
    ctx = 512 if text else 256
    t0 = time.perf_counter()
    ckpt = load(source)
    print(f"loaded {source} in {time.perf_counter() - t0:.1f} s")
    ref = torch_perplexity(ckpt.model, ckpt.tokenizer, corpus, ctx, max_chunks, progress=True)
    rows = [{"artifact": f"{source} (torch fp32)", "file_mb": None, "ppl": ref.ppl,
             "top1_agreement": 1.0, "mean_kl": 0.0}]
    for gtype in DEMO_TYPES:
        path = out_dir / f"{source}.{gtype.lower()}.gguf"
        res = export_gguf(ckpt, path, gtype)
        ppl = gguf_perplexity(path, corpus, ctx, max_chunks, progress=True)
        if ppl.tokens_scored != ref.tokens_scored:
            raise RuntimeError("llama.cpp and torch scored different token counts")
        rows.append({"artifact": path.name, "file_mb": res.file_mb, "ppl": ppl.ppl,
                     "top1_agreement": res.validation["top1_agreement"], "mean_kl": res.validation["mean_kl"]})
    pkg = ollama.write_package(out_dir / f"{source}.q4_k_m.gguf", f"{source}:q4_k_m", out_dir / "ollama")
    summary = {"source": source, "text": str(text) if text else "built-in", "ctx": ctx, "windows": ref.windows,
               "tokens_scored": ref.tokens_scored, "rows": rows, "ollama_package": str(pkg.parent),
               "wall_seconds": time.perf_counter() - t0}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nperplexity on {summary['text']} ({ref.windows} windows of {ctx} tokens, {ref.tokens_scored} scored)")
    print(f"{'artifact':<42} {'MB':>8} {'ppl':>9} {'top-1':>7} {'KL':>8}")
    for r in rows:
        mb = f"{r['file_mb']:.1f}" if r["file_mb"] else "-"
        print(f"{r['artifact']:<42} {mb:>8} {r['ppl']:>9.3f} {r['top1_agreement']:>7.3f} {r['mean_kl']:>8.4f}")
    print(f"\nOllama package: {pkg.parent}  (ollama create {source}:q4_k_m -f {pkg})")
    return 0
