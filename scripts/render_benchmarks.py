"""Render BENCHMARKS.md from benchmarks/results/*.json (numbers are never typed by hand)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import REPO, RESULTS  # noqa: E402


def _machine(doc: dict) -> str:
    m = doc["machine"]
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GiB; "
            f"Python {m.get('python')}, torch {m.get('torch')}, llama-cpp-python {m.get('llama-cpp-python')}, gguf {m.get('gguf')}")


def _header(doc: dict, title: str, machine_note: str = "") -> list[str]:
    """Section title, the command that wrote the result, its commit and date, and the machine."""
    return [f"## {title} (`{doc.get('name', '')}.json`)", "",
            f"`{doc['command']}` — commit `{doc['git_commit'][:12]}`, {doc['date']}  ",
            f"Machine: {_machine(doc)}{machine_note}"]


def _table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def render_export(doc: dict) -> list[str]:
    m = doc["metrics"]
    lines = [
        *_header(doc, "GGUF export"), "",
        f"Source: `{m['source']}` (bundled Q4_1 GGUF, dequantized and saved as a HF checkpoint).", "",
        "| metric | value |", "|---|---|",
        f"| `export_seconds` (slimkit F16, whole process) | {m['export_seconds']} |",
        f"| `reference_seconds` ({m['reference']}) | {m['reference_seconds']} |",
        f"| `time_ratio` (median of per-pair ratios; target ≤ 1.0) | {m['time_ratio']} |",
        f"| `tensors_identical` | {m['tensors_identical']} |", "",
        f"Timing: {m['timing']}.  ",
        f"Perplexity: {m['ppl_protocol']} of `{m['ppl_text']}`.  ",
        f"Top-1: {m['top1_protocol']}.", "",
    ]
    lines += _ladder(m["ladder"])
    for name, sec in m.get("models", {}).items():
        lines += ["", f"### `{name}` (commit `{sec['git_commit'][:12]}`, {sec['date']}, `{sec['command']}`)", "",
                  f"`export_seconds` {sec['export_seconds']}, `reference_seconds` {sec['reference_seconds']} "
                  f"({sec['reference']}), `time_ratio` {sec['time_ratio']}, `tensors_identical` "
                  f"{sec['tensors_identical']}" + (f" (differing: {', '.join(sec['differing_tensors'][:5])})"
                                                   if sec["differing_tensors"] else "") + ".", ""]
        lines += _ladder(sec["ladder"])
    return lines + [""]


def _ladder(rows: list[dict]) -> list[str]:
    return _table(["type", "file MB", "ppl", "top-1 agreement", "mean KL"],
                  [[r["type"], r["file_mb"], r["ppl"], r["top1_agreement"], r["mean_kl"]] for r in rows])


def render_devices(doc: dict) -> list[str]:
    m = doc["metrics"]
    lines = [
        *_header(doc, "Device profiling: measured vs predicted llama.cpp speed", "  "),
        f"{m['threads']} threads, backend {m['backend']}, runner environment {m.get('runner_env', {})}, "
        f"{m['rounds']} interleaved rounds x {m['repetitions']} "
        f"repetitions, medians; 1-min load average min/median/max "
        f"{m['loadavg_1min']['min']:.2f}/{m['loadavg_1min']['median']:.2f}/{m['loadavg_1min']['max']:.2f}.  ",
        f"Split: {m['split']['rule']}. Pruned student: {m['pruned_student'].get('made_by', '?')}.", "",
        f"Median relative error on the scored artifacts: decode **{m['median_abs_error_decode']}** (target ≤ 0.10), "
        f"prefill **{m['median_abs_error_prefill']}** (target ≤ 0.20). Decode = tg128, prefill = pp512. "
        + (f"Noise of the measurements themselves (median deviation of one round's median from all rounds'): "
           f"decode {m['measurement_round_spread']['decode']}, prefill {m['measurement_round_spread']['prefill']}."
           if "measurement_round_spread" in m else ""), "",
    ]

    def speeds(rows: list[dict]) -> list[list]:
        return [[r["artifact"], *(f"{r[k]:.1f}" for k in ("measured_decode_tps", "predicted_decode_tps",
                                                            "measured_prefill_tps", "predicted_prefill_tps"))]
                for r in rows]

    lines += _table(["artifact", "measured decode tok/s", "predicted", "measured prefill tok/s", "predicted"],
                    speeds(m["rows"]))
    c = m["calibration"]
    lines += ["", f"Calibration ({c['source']}): decode {c.get('decode_fit', '')}; efficiency per tensor-type group "
              + ", ".join(f"{g} {e:.3f}" for g, e in c["decode_eff"].items())
              + f"; {1e6 * c.get('seconds_per_layer', 0):.0f} µs per layer and token. Fitted rows (not scored):", ""]
    lines += _table(["artifact", "measured decode", "fitted", "measured prefill", "fitted"], speeds(m["calibration_rows"]))
    lines += ["", "Predictions for the pruned student at Q4_0 (ctx 512; PREDICTIONS, calibrated on this host):", ""]
    lines += _table(["device", "decode tok/s", "prefill tok/s (512)", "TTFT ms (128)", "memory MB", "fits"],
                    [[name, f"{p['decode_tps']:.1f}", f"{p['prefill_tps_512']:.0f}", f"{p['ttft_ms']:.0f}",
                      f"{p['memory_mb']:.0f}", p["fits"]] for name, p in m["predictions"].items()])
    return lines + [""]


DISTILL_VARIANTS = [("ce", "cross-entropy fine-tune"), ("kd_fkl", "KD forward KL (top-k cache)"),
                    ("kd_rkl", "KD reverse KL (top-k cache)"), ("kd_fkl_feature", "KD forward KL + hidden MSE (online)"),
                    ("kd_sampled", "KD forward KL (sampled-logit cache)"),
                    ("blockwise_then_kd", "block-wise, then KD forward KL"),
                    ("kd_teacher_corpus", "KD forward KL on a teacher-written corpus")]


def render_distill(doc: dict) -> list[str]:
    m = doc["metrics"]
    if "tokens_per_s_naive" in m:   # written before the fair (same-trainer) throughput protocol
        return [*_header(doc, "Distillation"), "", "The result predates the current protocol; rerun "
                "scripts/bench_distill.py.", ""]
    lines = [*_header(doc, "Distillation", f"; load average {m.get('loadavg')}"), "",
             f"Student: {m['student']}; teacher `{m['teacher']}`. Train: {m['train_data']}, "
             f"{m['tokens']} tokens per variant. Eval: {m['eval_data']}. {m['protocol']}.", "",
             "| variant | WikiText-2 ppl |", "|---|---|",
             f"| teacher | {m['teacher_ppl']} |", f"| pruned, before training | {m['ppl_pruned']} |"]
    lines += [f"| {label} | {m.get('ppl_' + key, 'not run yet')} |" for key, label in DISTILL_VARIANTS]
    lines += ["", f"`recovered_fraction_kd` = {m.get('recovered_fraction_kd')} ({m.get('best_kd_variant')}; "
                  "target ≥ 0.8).", ""]
    if "throughput_ratio" in m:
        lines += ["| mode (same trainer, batch and loss) | tokens/s | peak RSS MB |", "|---|---|---|",
                  f"| online teacher | {m['tokens_per_s_online']} | {m['peak_rss_mb_online']} |",
                  f"| cached top-k logits (teacher never loaded) | {m['tokens_per_s_cached']} | "
                  f"{m['peak_rss_mb_cached']} |", "",
                  f"`throughput_ratio` = {m['throughput_ratio']} (target ≥ 1.3); `cache_build_seconds` = "
                  f"{m['cache_build_seconds']} for {m['cache_build_tokens']} tokens; the cache pays after "
                  f"{m['break_even_epochs']} epochs. `bf16_speedup` = {m['bf16_speedup']} (largest relative loss "
                  f"difference {m['bf16_loss_rel_diff']}); 2 threads over 1: {m['threads_2_over_1']}.", ""]
    if "head_chunk_speedup" in m:
        chunks = sorted(int(k.rsplit("chunk", 1)[1]) for k in m if k.startswith("tokens_per_s_head_chunk"))
        lines += ["| output head + loss (cached, bf16) | tokens/s | peak RSS MB | largest relative loss difference |",
                  "|---|---|---|---|",
                  f"| whole window | {m['tokens_per_s_head_whole']} | {m['peak_rss_mb_head_whole']} | |"]
        lines += [f"| {c} positions at a time | {m[f'tokens_per_s_head_chunk{c}']} | {m[f'peak_rss_mb_head_chunk{c}']} | "
                  f"{m[f'loss_rel_diff_head_chunk{c}']} |" for c in chunks]
        lines += ["", f"`head_chunk_speedup` = {m['head_chunk_speedup']} (best chunk {m['head_chunk_best']}; peak RSS "
                      f"ratio {m['head_chunk_rss_ratio']}).", ""]
    if m.get("not_run"):
        lines += ["Not run yet: " + ", ".join(m["not_run"]) + " (the script resumes where it stopped).", ""]
    return lines


def render_onnx(doc: dict) -> list[str]:
    m = doc["metrics"]
    load = ", ".join(f"{a[0]:.2f}" for a in m["loadavg"])
    p = m["protocol"]
    lines = [
        *_header(doc, "ONNX export next to GGUF", f"; 1-min load average at start, end: {load}."), "",
        "smollm2-135m-instruct. ONNX: `slimkit export onnx` (onnxruntime-genai model builder; int8 and int4 = "
        f"ONNX Runtime's MatMulNBits, block {p['int_block_size']}), each validated. GGUF: `slimkit export gguf`. "
        f"ppl: WikiText-2 validation, first {p['windows']} windows of {p['ctx']} tokens, one protocol in ONNX "
        f"Runtime, llama.cpp and torch. decode: greedy, {p['decode_tokens']} tokens after a {p['prompt_tokens']}-token "
        f"prompt, {p['threads']} threads (onnxruntime-genai, llama-cpp-python, torch with KV cache), median of "
        f"{p['repeats']} interleaved rounds.", "",
    ]
    lines += _table(["format", "precision", "file MB", "ppl", "decode tokens/s"],
                    [[r["format"], r["precision"], r["file_mb"], r["ppl"], r["decode_tokens_per_s"]] for r in m["rows"]])
    return lines + [""]


def render_qad(doc: dict) -> list[str]:
    m = doc["metrics"]
    p, t, v = m["protocol"], m["training"], m["qad_export_validation"]
    rows = [["F16 (`ppl_fp`)", m["ppl_fp"], m["file_mb"]["fp"]],
            ["post-training Q4_0 (`ppl_ptq_q4_0`)", m["ppl_ptq_q4_0"], m["file_mb"]["ptq_q4_0"]],
            ["post-training Q4_K_M, llama.cpp (`ppl_ptq_q4_k_m`)", m["ppl_ptq_q4_k_m"], m["file_mb"]["ptq_q4_k_m"]],
            ["QAD Q4_0, trained blocks (`ppl_qad_q4_0`)", m["ppl_qad_q4_0"], m["file_mb"]["qad_q4_0"]]]
    return [
        *_header(doc, "Quantization-aware distillation to Q4_0"), "",
        f"Model `{m['model']}`, teacher {p['teacher']}; trained on {', '.join(p['train_text'])} for "
        f"`tokens` = {m['tokens']} ({t['seconds']} s of training); perplexity in {p['runtime']} on `{p['eval_text']}`, "
        f"{p['windows']} windows of {p['ctx']}.  ",
        f"Training: `{t['command']}`.", "",
        *_table(["file", "ppl", "file MB"], rows), "",
        f"`recovery` = (ppl_ptq_q4_0 − ppl_qad_q4_0) / (ppl_ptq_q4_0 − ppl_fp) = **{m['recovery']}** (target ≥ 0.8).  ",
        f"At the end of training, on held-out windows of the training text: KL(teacher ‖ fake-quant student) "
        f"{t['final_eval']['kl_to_teacher']:.4f}, top-1 agreement {t['final_eval']['top1_agreement']:.3f}.  ",
        f"Export validation of the QAD file in llama.cpp against the fake-quant torch model: max |dlogit| "
        f"{v['max_abs_diff']:.4g} (tolerance {v['tolerance']:.4g}), top-1 agreement {v['top1_agreement']:.3f}.", ""]


def render_default_run(doc: dict) -> list[str]:
    m = doc["metrics"]
    p = m["protocol"]
    rows = [["student (QAD Q4_0 GGUF)", m["student_params"], m["student_file_mb"], m["student_ppl"],
             m["student_decode_tps"]],
            ["teacher (Q4_K_M GGUF)", m["teacher_params"], m["teacher_file_mb"], m["teacher_ppl"],
             m["teacher_decode_tps"]]]
    return [
        *_header(doc, "The default run (`make run`)"), "",
        f"Recipe `{Path(m['recipe']).name}`; perplexity in llama.cpp on `{Path(str(p['eval'])).name}`, {p['windows']} "
        f"windows of {p['ctx']}; decode: {p['decode']}. Wall **{m['wall_seconds']} s**; `speedup` (student / teacher "
        f"decode) **{m['speedup']}**; the student's ONNX int4 export: ppl {m['student_onnx_ppl']}.", "",
        *_table(["model", "params", "file MB", "ppl", "decode tok/s"], rows), "",
        *_table(["stage", "seconds"], [[k, v] for k, v in m["stage_seconds"].items()]), ""]


def render_rationale(doc: dict) -> list[str]:
    m = doc["metrics"]
    lines = _rationale_letter(doc) if "acc_label_only" in m else []
    titles = {"esnli": "e-SNLI (label words; chance 0.33)", "cqa_text": "CommonsenseQA, choice text (chance 0.20)"}
    for key, title in titles.items():
        if key in m:
            lines += _rationale_section(m[key], title)
    return lines


def _rationale_variants(m: dict) -> list[list]:
    em, t = m["exact_match"], m["teacher"]
    return [["label only (`acc_label_only`)", m["acc_label_only"], em["label_only"]],
            ["step-by-step, PaLM rationales (`acc_step_by_step`)", m["acc_step_by_step"], em["step_by_step"]],
            [f"multi-teacher, PaLM + {t['source']} (`acc_multi_teacher`)", m["acc_multi_teacher"],
             em["multi_teacher"]],
            [f"teacher {t['source']}, {t['k_shot']}-shot (`acc_teacher`)", "", m["acc_teacher"]]]


def _rationale_efficiency(m: dict, what: str) -> list[str]:
    return _table([f"fraction of the {what}", "label only", "step-by-step"],
                  [[d["fraction"], d["acc_label_only"], d["acc_step_by_step"]] for d in m["data_efficiency"]])


def _rationale_letter(doc: dict) -> list[str]:
    m = doc["metrics"]
    lr = m["local_rationales"]
    return [*_header(doc, "Rationale distillation on CommonsenseQA"), "",
            f"Student `{m['student']}`, a seeded subset of {m['train_subset']} training records, "
            f"{m['test_questions']} test questions. Every variant: {m['steps_per_variant']} steps of "
            f"{m['batch_size']} examples, lr {m['lr']}, seed {m['seed']}. Accuracy (chance: 0.20, five choices) = "
            f"the most likely choice after `[answer]` (no rationale generated); exact match = the greedy answer. "
            f"{m['teacher']['source']} rationales: {lr['consistent']} of {lr['generated']} consistent with the gold "
            f"answer ({lr['k_shot']} in-context examples). {m['elapsed_seconds']} s from the first stage to the result, "
            f"{m['jobs']} stages at a time.", "",
            *_table(["variant", "choice accuracy", "exact match"], _rationale_variants(m)), "",
            *_rationale_efficiency(m, "subset"), ""]


def _rationale_section(m: dict, title: str) -> list[str]:
    b, lr = m["budget"], m["local_rationales"]
    return [f"### Rationale distillation: {title}", "",
            f"`{m['command']}` — commit `{m['git_commit'][:12]}`, {m['date']}, budget `{b['name']}`  ",
            f"Machine: {_machine(m)}  ",
            f"Student `{m['student']}`, {m['examples']} training records, {m['test_questions']} test questions "
            f"({m['test_subset']}). Every variant: {m['steps']} steps of {b['batch_size']} examples, lr {b['lr']}, "
            f"seed {b['seed']}. Accuracy = the choice with the highest {m['choice_score']} after `[answer]`; "
            f"exact match = the greedy answer is the choice's text. {m['teacher']['source']} rationales for "
            f"{lr['records']} records: the consistency filter kept {lr['consistent']} of {lr['generated']} "
            f"({lr['k_shot']} in-context examples). {m['seconds']} s from the first stage to the result, "
            f"{b['jobs']} stages at a time, load average {', '.join(f'{x:.1f}' for x in m['load_avg'])}.", "",
            *_table(["variant", "choice accuracy", "exact match"], _rationale_variants(m)), "",
            *_rationale_efficiency(m, "training records"), ""]


def render_validation(doc: dict) -> list[str]:
    m = doc["metrics"]
    w = m["worst"]
    lines = [*_header(doc, "GGUF validation on correct files"), "",
             f"Models: {', '.join(f'`{x}`' for x in m['models'])}; methods: {', '.join(m['methods'])}; "
             f"imatrix: {m['imatrix_calibration']}; text: {m['text']}. The gates of `export/validate.py` "
             "(GATES) and `export/gguf/blockcheck.py` (BLOCK_LIMIT) are set from the worst values below with "
             "their stated margins (checked by tests/export/test_validation_gates.py).", "",
             "Worst correct file per `--type`: llama.cpp against torch running the file's own values.", ""]
    lines += _table(["type", "max relative abs dlogit", "mean KL", "min top-1"],
                    [[t, g["max_rel_diff"], g["max_kl"], g["min_top1"]] for t, g in w["gates"].items()])
    lines += ["", "Worst block per tensor type (relative error against the model's weights):", ""]
    lines += _table(["tensor type", "max block error"], [[t, v] for t, v in sorted(w["block_max_rel"].items())])
    real = [r for r in m["rows"] if not r["model"].startswith("tiny-")]
    lines += ["", "ONNX int8 / int4 against the float model (gated: QUANT_LIMITS), worst over all models:", ""]
    lines += _table(["precision", "max mean KL", "min top-1"], [[p, g["max_kl"], g["min_top1"]] for p, g in w["onnx"].items()])
    lines += ["", "Quality cost against the float model (GGUF: reported, not gated; the zoo models):", ""]
    lines += _table(["model", "type", "method", "top-1 agreement", "mean KL"],
                    [[r["model"], r.get("type", "onnx " + r.get("precision", "")), r.get("method", ""),
                      r["top1_agreement"], r["mean_kl"]] for r in real])
    return lines + [""]


def _qad(doc: dict) -> list[str]:
    from scripts import render_quant

    if "inits" in doc["metrics"]:  # written by bench_qad.py since the GPTQ starting point
        return render_quant.render_qad(doc, _header, _table)
    return render_qad(doc)


def _prune(doc: dict) -> list[str]:
    from scripts import render_prune

    return render_prune.render_prune(doc, _header, _table)


def _quant(doc: dict) -> list[str]:
    from scripts import render_quant

    return render_quant.render_quant(doc, _header, _table)


RENDERERS = {"export": render_export, "prune": _prune, "devices": render_devices, "distill": render_distill,
             "onnx": render_onnx, "qad": _qad, "quant": _quant, "default_run": render_default_run,
             "rationale": render_rationale, "validation": render_validation}


def main() -> None:
    out = ["# Benchmarks", "",
           "Generated by `scripts/render_benchmarks.py` from `benchmarks/results/*.json`; each JSON file is "
           "written by the `scripts/bench_*.py` script named in it. Timings on a shared machine are noisy: "
           "medians and A/B ratios measured in one run.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        doc = json.loads(path.read_text())
        render = RENDERERS.get(doc.get("name", path.stem))
        if render:
            out += render(doc)
    (REPO / "BENCHMARKS.md").write_text("\n".join(out))
    print(REPO / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
