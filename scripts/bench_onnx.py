"""Benchmark ONNX export of smollm2-135m-instruct next to GGUF in llama.cpp (and torch);
writes benchmarks/results/onnx.json.

Rows ({format, precision, file_mb, ppl, decode_tokens_per_s}), all measured in this one run:
- onnx fp32 / fp16 / int8 / int4 (MatMulNBits, block 32): `export_onnx` with
  validation on; gguf Q8_0 / Q4_0: `export_gguf` with validation on; torch fp32: the source.
- file_mb: model files (.onnx + external data, .gguf, model.safetensors), 1e6 bytes.
- ppl: WikiText-2 v1 validation (wikitext2_v1_tokenized_valid.txt), first WINDOWS windows of
  CTX tokens under compress.evaluate's protocol, in ONNX Runtime / llama.cpp / torch.
- decode_tokens_per_s: greedy decoding of DECODE_TOKENS tokens after a PROMPT_TOKENS-token
  prompt (prefill not timed), batch 1, THREADS threads on CPU: onnxruntime-genai's Generator
  (what an app runs), llama-cpp-python's generate, torch with its KV cache. Median of REPEATS
  rounds; rounds interleave the formats so load changes hit all of them alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import REPO, SHARED_DATA, write_result  # noqa: E402

SOURCE = "smollm2-135m-instruct"
TEXT = SHARED_DATA / "text" / "wikitext2_v1_tokenized_valid.txt"
ONNX_PRECISIONS = ("fp32", "fp16", "int8", "int4")
GGUF_TYPES = ("Q8_0", "Q4_0")
THREADS, CTX, WINDOWS = 2, 512, 16
PROMPT_TOKENS, DECODE_TOKENS, REPEATS = 32, 128, 3


def text_path() -> Path:
    for path in (TEXT, TEXT.with_suffix(".txt.gz")):
        if path.is_file():
            return path
    sys.exit(f"{TEXT} not found: the benchmark needs ../shared/data")


def onnx_decode(model_dir: Path, prompt: list[int]):
    from export.onnx.runtime import genai_model

    model = genai_model(model_dir, threads=THREADS)

    def run() -> float:
        import onnxruntime_genai as og

        params = og.GeneratorParams(model)
        total = len(prompt) + DECODE_TOKENS + 1
        params.set_search_options(max_length=total, min_length=total, do_sample=False)  # no early EOS
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        gen.generate_next_token()  # the first token comes out of the prefill: not timed
        start = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            gen.generate_next_token()
        return DECODE_TOKENS / (time.perf_counter() - start)

    return run


def gguf_decode(path: Path, prompt: list[int]):
    import llama_cpp

    from export.runtime import quiet_stderr

    with quiet_stderr():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=CTX, n_threads=THREADS, n_threads_batch=THREADS,
                              verbose=False)

    def run() -> float:
        stream = llm.generate(prompt, top_k=1, temp=0.0, reset=True)
        next(stream)  # first token: prefill, not timed
        start = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            next(stream)
        elapsed = time.perf_counter() - start
        stream.close()
        return DECODE_TOKENS / elapsed

    return run


def torch_decode(model, prompt: list[int]):
    import torch

    def run() -> float:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
            past, tok = out.past_key_values, out.logits[0, -1].argmax()
            start = time.perf_counter()
            for _ in range(DECODE_TOKENS):
                out = model(input_ids=tok.view(1, 1), past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[0, -1].argmax()
            return DECODE_TOKENS / (time.perf_counter() - start)

    return run


def gguf_ppl(path: Path, text: str) -> float:
    """export.runtime.gguf_perplexity's protocol, with the benchmark's thread count."""
    from compress.evaluate import make_windows, perplexity
    from export.runtime import LlamaRunner, gguf_adds_bos

    runner = LlamaRunner(path, n_ctx=CTX, threads=THREADS)
    try:
        bos = runner.bos_id if gguf_adds_bos(path) else None
        return perplexity(runner.logits, make_windows(runner.tokenize(text), CTX, WINDOWS, bos)).ppl
    finally:
        runner.close()


def export_all(work: Path) -> tuple[object, Path, dict[tuple[str, str], Path]]:
    from compress.checkpoint import load, save
    from export.gguf.writer import export_gguf
    from export.onnx.export import export_onnx

    ckpt = load(SOURCE)
    saved = save(ckpt, work / "ckpt")
    artifacts = {}
    for p in ONNX_PRECISIONS:
        res = export_onnx(saved, work / f"onnx-{p}", p)  # validated: raises if a check fails
        print(f"onnx {p}: {res.file_mb:.1f} MB, top-1 {res.validation['top1_agreement']:.3f}, "
              f"KL {res.validation['mean_kl']:.4g}", flush=True)
        artifacts[("onnx", p)] = res.path
    for t in GGUF_TYPES:
        artifacts[("gguf", t)] = export_gguf(saved, work / f"model-{t}.gguf", t).path
    return ckpt, saved, artifacts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=None, help="keep the artifacts here (default: a temp dir)")
    args = ap.parse_args()

    import torch

    from compress.evaluate import read_text, tokenize_plain, torch_perplexity
    from export.onnx.layout import file_mb
    from export.onnx.runtime import onnx_perplexity

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    text = read_text(text_path())
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_onnx_", dir=REPO / "build" if (REPO / "build").is_dir() else None))
    ckpt, saved, artifacts = export_all(work)
    prompt = tokenize_plain(ckpt.tokenizer, text)[:PROMPT_TOKENS]

    rows, decoders = [], {}
    rows.append({"format": "torch", "precision": "fp32", "file_mb": round((saved / "model.safetensors").stat().st_size / 1e6, 2),
                 "ppl": torch_perplexity(ckpt.model, ckpt.tokenizer, text, CTX, WINDOWS).ppl})
    decoders[("torch", "fp32")] = torch_decode(ckpt.model, prompt)
    for (fmt, prec), path in artifacts.items():
        if fmt == "onnx":
            size, ppl = file_mb(path), onnx_perplexity(path, text, CTX, WINDOWS, threads=THREADS).ppl
            decoders[(fmt, prec)] = onnx_decode(path, prompt)
        else:
            size, ppl = path.stat().st_size / 1e6, gguf_ppl(path, text)
            decoders[(fmt, prec)] = gguf_decode(path, prompt)
        rows.append({"format": fmt, "precision": prec, "file_mb": round(size, 2), "ppl": ppl})
        print(f"{fmt} {prec}: {size:.1f} MB, ppl {ppl:.4f}", flush=True)

    speeds: dict[tuple[str, str], list[float]] = {k: [] for k in decoders}
    for _ in range(REPEATS):
        for key, run in decoders.items():
            speeds[key].append(run())
    for row in rows:
        row["ppl"] = round(row["ppl"], 4)
        row["decode_tokens_per_s"] = round(statistics.median(speeds[(row["format"], row["precision"])]), 1)
        print(row, flush=True)
    from export.onnx.config import DEFAULT_BLOCK_SIZE

    protocol = {"threads": THREADS, "ctx": CTX, "windows": WINDOWS, "prompt_tokens": PROMPT_TOKENS,
                "decode_tokens": DECODE_TOKENS, "repeats": REPEATS, "int_block_size": DEFAULT_BLOCK_SIZE}
    path = write_result("onnx", {"rows": rows, "protocol": protocol, "loadavg": [load_before, os.getloadavg()]})
    print(path)


if __name__ == "__main__":
    main()
