"""BENCHMARKS.md sections for quant.json and qad.json (numbers come from the files only)."""
from __future__ import annotations

from typing import Callable

HEADLINE = [("ppl_f16", "F16"), ("ppl_q4_0_rtn", "Q4_0, round-to-nearest"),
            ("ppl_q4_0_imatrix", "Q4_0, llama.cpp's quantizer with the same imatrix"),
            ("ppl_q4_0_gptq", "Q4_0, slimkit GPTQ"), ("ppl_q4_0_autoround", "Q4_0, AutoRound (peer)"),
            ("ppl_q4_k_m_rtn", "Q4_K_M, llama.cpp without imatrix"),
            ("ppl_q4_k_m_imatrix", "Q4_K_M, llama.cpp with the imatrix"),
            ("ppl_q4_k_m_gptq", "Q4_K_M mix, slimkit GPTQ"), ("ppl_q4_k_m_autoround", "Q4_K_M, AutoRound (peer)")]


def render_quant(doc: dict, header: Callable, table: Callable) -> list[str]:
    m = doc["metrics"]
    p = m["protocol"]
    calib = ", ".join(f"{k}: {v['calib_tokens']} tokens, {v['calib_seconds']} s" for k, v in m["calibration"].items())
    lines = [*header(doc, "Calibrated quantization: imatrix, GPTQ, AutoRound"), "",
             f"Eval: llama.cpp on `{p['eval_text']}`, {p['windows']} windows of {p['ctx']}; `kld`: {p['kld']}; "
             f"`top1`: argmax agreement with the F16 file. Calibration: {', '.join(p['calib_text'])} "
             f"({calib}; never the eval text). Wall {m['wall_seconds']} s, load average {m['load_avg']}.", ""]
    for model, h in m["by_model"].items():
        rows = [[f"`{key}`", what, h[key]] for key, what in HEADLINE if key in h]
        extra = [f"`{k}` = **{h[k]}**" for k in ("recovery_q4_0_gptq", "kld_ratio_q4_k_m", "kld_q4_0_rtn",
                                                  "kld_q4_0_imatrix", "kld_q4_0_gptq") if k in h]
        if "q4_0_gptq_method" in h:
            extra.append(f"(GPTQ variant: {h['q4_0_gptq_method']})")
        lines += [f"**{model}** — " + " ".join(extra), "", *table(["key", "file", "ppl"], rows), ""]
    rows = []
    for r in m["rows"]:
        if "error" in r:
            rows.append([r["model"], r["type"], r["method"], "", "", "", "", "", f"not run: {r['error']}"])
            continue
        note = "" if "identical_to_llama_cpp" not in r else \
            f"slimkit's `--method imatrix` file byte-identical: {r['identical_to_llama_cpp']}"
        if "measured_at_commit" in r:
            note = (note + "; " if note else "") + f"measured at commit {r['measured_at_commit'][:12]}"
        seconds = r["quantize_seconds"] if r["quantize_seconds"] is not None else ""
        rows.append([r["model"], r["type"], r["method"], r["file_mb"], r["ppl"], r["kld"], r["top1"], seconds, note])
    return lines + table(["model", "type", "method", "file MB", "ppl", "kld", "top1", "quantize s", "note"],
                         rows) + [""]


def render_qad(doc: dict, header: Callable, table: Callable) -> list[str]:
    m = doc["metrics"]
    p = m["protocol"]
    labels = {"fp": "F16", "ptq_q4_0": "post-training Q4_0 (round-to-nearest)",
              "ptq_q4_k_m": "post-training Q4_K_M, llama.cpp",
              "qad_q4_0": "QAD Q4_0 from round-to-nearest", "step0_from_gptq": "GPTQ Q4_0 (QAD's step 0)",
              "qad_q4_0_from_gptq": "QAD Q4_0 from GPTQ"}
    rows = [[f"`ppl_{k}`", labels.get(k, k), m[f"ppl_{k}"], m["file_mb"][k]] for k in m["file_mb"]]
    lines = [*header(doc, "Quantization-aware distillation to Q4_0"), "",
             f"Model `{m['model']}`, teacher {p['teacher']}; trained on {', '.join(p['train_text'])} for "
             f"`tokens` = {m['tokens']} per starting point; perplexity in {p['runtime']} on `{p['eval_text']}`, "
             f"{p['windows']} windows of {p['ctx']}.", "",
             *table(["key", "file", "ppl", "file MB"], rows), ""]
    for key in sorted(k for k in m if k.startswith("recovery")):
        lines.append(f"`{key}` = **{m[key]}**  ")
    lines.append("recovery = (ppl_ptq_q4_0 − ppl) / (ppl_ptq_q4_0 − ppl_fp); target for QAD from GPTQ ≥ 0.8.  ")
    for init, t in m["training"].items():
        v = t["export_validation"]
        lines.append(f"From {init}: {t['seconds']} s of training (`{t['command']}`); held-out KL to the teacher "
                     f"{t['final_eval'].get('kl_to_teacher', float('nan')):.4f}; export validation max |dlogit| "
                     f"{v['max_abs_diff']:.4g} (tolerance {v['tolerance']:.4g}).  ")
    return lines + [""]
