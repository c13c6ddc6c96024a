"""Calibrated quantization benchmark -> benchmarks/results/quant.json.

For each model (default smollm2-135m-instruct and gemma3-270m, both dequantized to float32 from
their bundled GGUF) and each type (Q4_0, Q4_1, Q5_0, Q4_K_M, Q3_K_M, Q2_K), one GGUF per method:
  rtn           `slimkit export gguf --type T` (slimkit's reference blocks; llama.cpp's quantizer for K mixes)
  imatrix       llama.cpp's own quantizer given slimkit's imatrix (what a llama.cpp user gets with
                llama-imatrix + llama-quantize); the file slimkit writes with `--method imatrix` is
                compared with it byte for byte (`identical_to_llama_cpp`)
  gptq          `--method gptq` (GPTQ, reference block scales) inside llama.cpp's mix for T
  gptq+imatrix  `--method gptq+imatrix` (GPTQ, importance-weighted block scales)
  autoround     the peer: AutoRound (PyPI auto-round, its own virtualenv) for Q4_0 and Q4_K_M, smollm2
Calibration: 8192 tokens (at most 32k) of TinyStories (train head) + tiny Shakespeare in turn, never
the eval text; one pass collects the imatrix, GPTQ then runs block by block (compress.quant.sequential)
with its default damping. Eval: WikiText-2 v1 valid, 16 windows of 512,
llama.cpp, every file side by side with the model's F16 file: perplexity, `kld` = mean
KL(F16 || file) of the next-token distributions over every scored token (llama-perplexity
--kl-divergence), `top1` = argmax agreement with F16. The F16 log-probs are cached as float16
under the work directory. Resumable: files and scores already in the work directory are reused.

    .venv/bin/python scripts/bench_quant.py [--models ...] [--types ...] [--calib-tokens 16384]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import RESULTS, SHARED_DATA, earlier_rows, write_result  # noqa: E402

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q4_K_M", "Q3_K_M", "Q2_K"]
METHODS = ["rtn", "imatrix", "gptq", "gptq+imatrix"]
CALIB = ["tinystories_train_head.txt.gz", "tiny_shakespeare.txt.gz"]
EVAL = SHARED_DATA / "text" / "wikitext2_v1_tokenized_valid.txt.gz"
AUTOROUND_TYPES = {"Q4_0": "q4_0", "Q4_K_M": "q4_k_m"}
IDENTITY_TYPES = ("Q4_0", "Q4_1", "Q5_0")  # slimkit's own --method imatrix file compared byte for byte


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Scorer:
    """Perplexity, KL from F16 and top-1 agreement of GGUF files on fixed windows, in llama.cpp."""

    def __init__(self, f16: Path, work: Path, windows: int, ctx: int = 512) -> None:
        from compress.evaluate import make_windows, read_text
        from export.runtime import LlamaRunner, gguf_adds_bos

        runner = LlamaRunner(f16, n_ctx=ctx)
        try:
            tokens = runner.tokenize(read_text(EVAL))
            bos = runner.bos_id if gguf_adds_bos(f16) else None
            self.windows = make_windows(tokens, ctx, windows, bos)
            base = work / f"f16-logprobs-{len(self.windows)}x{ctx}.npy"
            if not base.is_file():
                vocab = runner.llm.n_vocab()
                tmp = base.with_suffix(".partial.npy")
                arr = np.lib.format.open_memmap(tmp, "w+", np.float16, (len(self.windows), ctx - 1, vocab))
                for i, w in enumerate(self.windows):
                    arr[i] = self._logprobs(runner.logits(w)[:-1]).astype(np.float16)
                arr.flush()
                del arr
                os.replace(tmp, base)
        finally:
            runner.close()
        self.base = np.load(base, mmap_mode="r")

    @staticmethod
    def _logprobs(logits: np.ndarray) -> np.ndarray:
        x = logits.astype(np.float32)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    def score(self, path: Path) -> dict[str, float]:
        from export.runtime import LlamaRunner

        runner = LlamaRunner(path, n_ctx=len(self.windows[0]))
        nll = kl = agree = count = 0.0
        try:
            for i, w in enumerate(self.windows):
                lp = self._logprobs(runner.logits(w)[:-1])  # (ctx - 1, vocab): position t predicts t + 1
                base = self.base[i].astype(np.float32)
                nll -= float(lp[np.arange(len(w) - 1), np.asarray(w[1:])].astype(np.float64).sum())
                kl += float((np.exp(base) * (base - lp)).sum(dtype=np.float64))
                agree += float((base.argmax(-1) == lp.argmax(-1)).sum())
                count += len(w) - 1
        finally:
            runner.close()
        return {"ppl": round(float(np.exp(nll / count)), 4), "kld": round(kl / count, 6),
                "top1": round(agree / count, 4), "eval_tokens": int(count)}


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 2)


def _calibration(ckpt, tokens: int):
    from compress.calib import calibration_windows, collect

    start = time.perf_counter()
    files = [SHARED_DATA / "text" / f for f in CALIB]
    windows, source = calibration_windows(ckpt.model, ckpt.tokenizer, files, tokens, 512)
    if windows.numel() < tokens:
        raise SystemExit(f"bench_quant: the calibration text holds only {windows.numel()} tokens")
    stats = collect(ckpt.model, windows, source=source)  # the imatrix; sequential GPTQ collects its own Grams
    return stats, windows, round(time.perf_counter() - start, 1)


def _identical(a: Path, b: Path) -> bool:
    import gguf

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    return set(ta) == set(tb) and all(ta[n].tensor_type == tb[n].tensor_type and
                                      np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)) for n in ta)


def _make(model: str, gtype: str, method: str, ckpt, cal, work: Path) -> tuple[Path, dict]:
    """Write one file (or reuse it); returns (path, extra row fields)."""
    from export.gguf import types as gtypes
    from export.gguf.imatrix import from_stats
    from export.gguf.calibrated import imatrix_names
    from export.gguf.quantize import llama_quantize
    from export.gguf.writer import export_gguf, write_native

    out = work / f"{gtype}-{method.replace('+', '_')}.gguf"
    meta = work / (out.name + ".meta.json")
    making = work / (out.name + ".making")  # another invocation (--make-peer-files) is writing it
    while making.is_file() and not meta.is_file():
        time.sleep(30)
    if out.is_file() and meta.is_file():  # made by an earlier (interrupted or parallel) invocation
        return out, {**json.loads(meta.read_text()), "made_by_earlier_invocation": True}
    start = time.perf_counter()
    extra: dict = {}
    if method == "rtn":
        export_gguf(ckpt, out, gtype, validate=False)
    elif method == "imatrix":  # llama.cpp's own quantizer with the imatrix: the llama.cpp user's file
        im = from_stats(cal().stats, imatrix_names(ckpt), [cal().stats.source], 512)
        f32 = work / "f32.gguf"
        if not f32.is_file():
            write_native(ckpt, f32, gtypes.parse("F32"))
        llama_quantize(f32, out, gtypes.parse(gtype), imatrix={n: im.values(n) for n in im.sums})
        extra["quantize_seconds"] = round(time.perf_counter() - start, 1)
        if gtype in IDENTITY_TYPES:
            ours = work / f"{gtype}-imatrix-slimkit.gguf"
            export_gguf(ckpt, ours, gtype, method="imatrix", calibration=cal())
            extra["identical_to_llama_cpp"] = _identical(out, ours)
            extra["slimkit_quantize_seconds"] = round(time.perf_counter() - start - extra["quantize_seconds"], 1)
            ours.unlink()
    elif method == "autoround":
        from scripts.peer_autoround import quantize_with_autoround

        making.write_text(str(os.getpid()))
        hf = work / "hf"
        if not (hf / "config.json").is_file():
            from compress.checkpoint import save

            save(ckpt, hf)
        calib_text = SHARED_DATA / "text" / CALIB[0]
        try:
            extra = quantize_with_autoround(hf, calib_text, AUTOROUND_TYPES[gtype], out, work=work / "autoround")
        except BaseException:
            making.unlink(missing_ok=True)
            raise
    else:
        res = export_gguf(ckpt, out, gtype, method=method, calibration=cal())
        extra["validation_passed"] = bool(res.validation and res.validation["passed"])
    extra.setdefault("quantize_seconds", round(time.perf_counter() - start, 1))
    meta.write_text(json.dumps(extra))
    making.unlink(missing_ok=True)
    return out, extra


def bench_model(model: str, types: list[str], methods: list[str], args) -> dict:
    from compress.checkpoint import load
    from export.gguf.calibrated import Calibration
    from export.gguf.writer import export_gguf

    work = args.work.resolve() / model
    work.mkdir(parents=True, exist_ok=True)
    scores_path = work / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    ckpt = load(model)
    f16 = work / "F16.gguf"
    if not f16.is_file():
        export_gguf(ckpt, f16, "F16", validate=False)
    _log(f"{model}: F16 log-probs")
    scorer = Scorer(f16, work, args.windows)
    calib_path = work / "calibration.json"
    state: dict = {}

    def cal() -> Calibration:  # computed once, only when a file still has to be made
        if "cal" not in state:
            stats, windows, seconds = _calibration(ckpt, args.calib_tokens)
            state["cal"] = Calibration(stats=stats, windows=windows)
            calib_path.write_text(json.dumps({"calib_tokens": stats.tokens, "calib_seconds": seconds,
                                              "calib_text": stats.source}))
            _log(f"{model}: calibration {stats.tokens} tokens in {seconds} s")
        return state["cal"]

    def row(gtype: str, method: str) -> dict:
        out = work / f"{gtype}-{method.replace('+', '_')}.gguf"
        prior = args.earlier.get((model, gtype, method))
        if prior is not None and not out.is_file():   # measured before this work directory was made
            return {**{k: v for k, v in prior.items() if k != "made_by_earlier_invocation"},
                    "measured_at_commit": prior.get("measured_at_commit", args.earlier_commit)}
        if args.cached_only and not (out.is_file() and (work / (out.name + ".meta.json")).is_file()):
            return {"model": model, "type": gtype, "method": method,
                    "error": "not run yet (the session's time ran out; the script resumes where it stopped)"}
        path, extra = _make(model, gtype, method, ckpt, cal, work)
        if path.name not in scores:
            scores[path.name] = scorer.score(path)
            scores_path.write_text(json.dumps(scores, indent=1))
        r = {"model": model, "type": gtype, "method": method, "file_mb": _mb(path), **scores[path.name], **extra}
        _log(f"{model} {gtype} {method}: ppl {r['ppl']} kld {r['kld']} top1 {r['top1']} "
             f"({r['file_mb']} MB, {r['quantize_seconds']} s)")
        return r

    prior = args.earlier.get((model, "F16", "none"))
    if prior is not None and "F16.gguf" not in scores:   # the reference the reused rows' kld was measured against
        _log(f"{model}: F16 ppl {scorer.score(f16)['ppl']} now, {prior['ppl']} when the reused rows were measured")
    rows = [{"model": model, "type": "F16", "method": "none", "file_mb": _mb(f16), **(scores.get("F16.gguf") or
             scores.setdefault("F16.gguf", scorer.score(f16))), "quantize_seconds": None}]
    scores_path.write_text(json.dumps(scores, indent=1))
    for gtype in types:
        for method in methods:
            if method == "gptq" and args.plain_gptq_types and gtype not in args.plain_gptq_types:
                continue
            rows.append(row(gtype, method))
    if not calib_path.is_file() and model in args.earlier_calibration:   # every row reused: so was calibration
        calib_path.write_text(json.dumps(args.earlier_calibration[model]))
    if not calib_path.is_file():
        cal()
    result = {"rows": rows, **json.loads(calib_path.read_text())}
    result["peer"] = lambda: _peer_rows(model, types, row, args)  # run after every model's own rows
    return result


def _peer_rows(model: str, types: list[str], row, args) -> list[dict]:
    """AutoRound's files for the first model (each takes 15-25 minutes on 2 busy cores)."""
    rows = []
    for gtype in (t for t in types if t in AUTOROUND_TYPES):
        try:
            rows.append(row(gtype, "autoround"))
        except RuntimeError as exc:
            rows.append({"model": model, "type": gtype, "method": "autoround", "error": str(exc)})
            _log(f"autoround {gtype}: {exc}")
    return rows


def make_peer_files(args) -> None:
    from compress.checkpoint import load

    model = args.models[0]
    work = args.work.resolve() / model
    work.mkdir(parents=True, exist_ok=True)
    ckpt = load(model)
    for gtype in (t for t in args.types if t in AUTOROUND_TYPES):
        try:
            _make(model, gtype, "autoround", ckpt, None, work)
        except RuntimeError as exc:
            _log(f"autoround {gtype}: {exc}")


def headline(rows: list[dict]) -> dict:
    def get(gtype: str, method: str) -> dict | None:
        return next((r for r in rows if r["type"] == gtype and r["method"] == method and "ppl" in r), None)

    f16 = get("F16", "none")
    rtn, imat = get("Q4_0", "rtn"), get("Q4_0", "imatrix")
    gptqs = [r for r in (get("Q4_0", "gptq"), get("Q4_0", "gptq+imatrix")) if r]
    out: dict = {"ppl_f16": f16["ppl"]}
    if rtn:
        out["ppl_q4_0_rtn"] = rtn["ppl"]
    if imat:
        out["ppl_q4_0_imatrix"] = imat["ppl"]
    if gptqs and rtn:
        best = min(gptqs, key=lambda r: r["ppl"])
        out.update(ppl_q4_0_gptq=best["ppl"], q4_0_gptq_method=best["method"],
                   recovery_q4_0_gptq=round((rtn["ppl"] - best["ppl"]) / (rtn["ppl"] - f16["ppl"]), 4),
                   kld_q4_0_gptq=best["kld"], top1_q4_0_gptq=best["top1"])
    for name, r in (("rtn", rtn), ("imatrix", imat)):
        if r:
            out[f"kld_q4_0_{name}"], out[f"top1_q4_0_{name}"] = r["kld"], r["top1"]
    krtn, kim = get("Q4_K_M", "rtn"), get("Q4_K_M", "imatrix")
    if krtn:
        out["ppl_q4_k_m_rtn"] = krtn["ppl"]
    if kim:
        out["ppl_q4_k_m_imatrix"] = kim["ppl"]
    if krtn and kim:
        out["kld_ratio_q4_k_m"] = round(kim["kld"] / krtn["kld"], 4)
    kg = [r for r in (get("Q4_K_M", "gptq"), get("Q4_K_M", "gptq+imatrix")) if r]
    if kg:
        out["ppl_q4_k_m_gptq"] = min(r["ppl"] for r in kg)
    for gtype in ("Q4_0", "Q4_K_M"):
        ar = get(gtype, "autoround")
        if ar:
            out[f"ppl_{gtype.lower()}_autoround"] = ar["ppl"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--calib-tokens", type=int, default=8192, help="calibration tokens (at most 32k)")
    ap.add_argument("--model-methods", action="append", default=[], metavar="MODEL=M1,M2",
                    help="methods for one model instead of --methods (e.g. to keep a larger model's run short)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--no-autoround", dest="autoround", action="store_false")
    ap.add_argument("--work", type=Path, default=Path("build/bench_quant"))
    ap.add_argument("--model-types", action="append", default=[], metavar="MODEL=T1,T2",
                    help="types for one model instead of --types")
    ap.add_argument("--plain-gptq-types", nargs="*", default=None, metavar="TYPE",
                    help="run the plain gptq method (reference block scales) only for these types")
    ap.add_argument("--cached-only", action="store_true", help="write the result from the files already made; "
                    "rows not made yet are listed as such")
    ap.add_argument("--fresh", action="store_true", help="measure every row again instead of reusing the rows of "
                    "benchmarks/results/quant.json whose files are not in the work directory")
    ap.add_argument("--make-peer-files", action="store_true", help="only write the AutoRound files of the first "
                    "model (run beside the main invocation on another core; it waits for them)")
    args = ap.parse_args()
    args.earlier_commit, earlier = ("", []) if args.fresh else earlier_rows("quant")
    args.earlier = {(r["model"], r["type"], r["method"]): r for r in earlier}
    args.earlier_calibration = {} if args.fresh or not earlier else \
        json.loads((RESULTS / "quant.json").read_text())["metrics"].get("calibration", {})
    if args.make_peer_files:
        return make_peer_files(args)
    for f in [EVAL, *(SHARED_DATA / "text" / t for t in CALIB)]:
        if not f.is_file():
            sys.exit(f"bench_quant: {f} is missing (needs ../shared/data)")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # llama.cpp on a shared machine
    start = time.perf_counter()
    chosen = dict(item.split("=", 1) for item in args.model_methods)
    typed = dict(item.split("=", 1) for item in args.model_types)
    per_model = {m: bench_model(m, typed[m].split(",") if m in typed else args.types,
                                chosen[m].split(",") if m in chosen else args.methods, args)
                 for m in args.models}
    for i, (m, v) in enumerate(per_model.items()):
        peer = v.pop("peer")
        if args.autoround and i == 0:
            v["rows"] += peer()
    rows = [r for m in per_model.values() for r in m["rows"]]
    metrics = {**headline(per_model[args.models[0]]["rows"]), "headline_model": args.models[0],
               "by_model": {m: headline(v["rows"]) for m, v in per_model.items()},
               "rows": rows,
               "calibration": {m: {k: v[k] for k in ("calib_tokens", "calib_seconds", "calib_text")}
                               for m, v in per_model.items()},
               "protocol": {"eval_text": EVAL.name, "windows": args.windows, "ctx": 512, "runtime": "llama.cpp",
                            "kld": "mean KL(F16 || file) over every scored token, F16 log-probs cached as float16",
                            "calib_text": CALIB},
               "wall_seconds": round(time.perf_counter() - start, 1), "load_avg": os.getloadavg(),
               "note": "wall_seconds is this invocation's; rows marked made_by_earlier_invocation reuse files (and "
                       "their scores) an earlier run of this script wrote to the work directory; rows with measured_at_commit "
                       "are the rows of the previous result file, measured at that commit (its work directory was gone)"}
    write_result("quant", metrics)


if __name__ == "__main__":
    main()
