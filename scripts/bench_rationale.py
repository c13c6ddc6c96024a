"""Rationale distillation benchmark -> benchmarks/results/rationale.json.

Student smollm2-135m-instruct, the `[answer]` prompt only at evaluation (no rationale generated):
exact match of the greedy answer, and the accuracy of the most likely choice. Three protocols:

  --task cqa                       CommonsenseQA, letter answers "(d) math problem" (the top-level metrics,
                                   unchanged since the first version: --subset 500 --steps 40 by default)
  --task cqa --answer-format text  CommonsenseQA, the choice's text as the answer -> section `cqa_text`
  --task esnli                     e-SNLI, the label word (entailment / neutral / contradiction) -> `esnli`

Text format (compress.rationale.formats): the target is the choice's text and a choice is scored by its
mean log-likelihood per token. e-SNLI trains on its valid split (the shared data has no train split:
9842 records) and is evaluated on a fixed subset of the test split: --test (default 1000) records drawn
with random.Random(0) and sorted by id, the same subset for every budget. CommonsenseQA uses its whole
test split (1221). Every variant trains the same --steps optimizer steps of --batch-size examples, seed 0:
  acc_label_only     no rationale ([answer] examples only)
  acc_step_by_step   + the PaLM-540B rationales of Distilling Step-by-Step ([explain:palm], alpha 1)
  acc_multi_teacher  + rationales of a local GGUF teacher for --teacher-records of the training records
                     (TinyLLM: teacher-forced, the gold answer in the prompt, --k-shot PaLM-rationale examples);
                     the consistency filter keeps those whose stated answer is not another choice
  acc_teacher        the local teacher answering few-shot (k fixed examples, llama.cpp, exact match)
  data_efficiency    label-only and step-by-step at 25% and 100% of the training records (same steps)
Local teacher: qwen2.5-coder-0.5b-instruct when the zoo has it, else gemma3-270m (the letter protocol
keeps gemma3-270m, its recorded teacher).

Budgets (--budget; any single flag overrides its preset value):
  cpu    --steps 120 --batch-size 16 --teacher-records 300 --test 1000 --jobs 2. Sized from measurements
         on this 2-core machine (session of 2026-12-02, an AMD EPYC exposing AVX2 only, so training runs
         in fp32: --precision auto picks bf16 only where the CPU has it natively, and emulated bf16 was
         10-30x slower than fp32 there): a label-only e-SNLI step of 16 examples (trimmed to the longest,
         ~60 tokens) took 22 s in fp32 on one thread beside a 2-thread job, 37-41 s as one of the two
         jobs of this script while other work ran; rationale steps are ~1.5x longer; the Qwen teacher
         took 11-15 s a rationale (Q4_K_M 0.5B, 4 examples, <= 96 tokens). The first cpu preset (400
         steps, 500 rationales, sized from a 10 s step that was not reproduced) would have taken ~10
         hours. This one: 120 x (2 x ~22 + 3 x ~33) s of training over five variants + 300 x 11 s of
         rationales + ~1500 s of evaluation + ~600 s of teacher answers = ~22500 job-seconds over 2 jobs,
         ~3.1 hours with nothing else running (more beside other work). CommonsenseQA text (~64 / ~93-token examples, 1221 questions of five choices) about
         1.3x that.
  cuda   --steps 800 --batch-size 32 --teacher-records 150 --test 1000 --jobs 4: meant to fit 8 minutes on
         one GPU (training and evaluation run on CUDA, the teacher on the CPUs; not measured yet).
  smoke  --steps 2 --batch-size 2, 40 records, 6 questions, 2 teacher rationales: proves the wiring in
         under 3 minutes (144 s here); prints the metrics and writes no result (nor does any run below
         20 steps or 100 test questions).

Every stage writes under --work/<section>-<budget> and is skipped when its output exists, so an
interrupted benchmark continues where it stopped; protocol.json there refuses other options. Sections
are merged into the existing result file (each with its own commit, date and machine).

    .venv/bin/python scripts/bench_rationale.py --task esnli --budget cpu
    .venv/bin/python scripts/bench_rationale.py --task cqa --answer-format text --budget cpu
    .venv/bin/python scripts/bench_rationale.py --task esnli --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.benchlib import RESULTS, SHARED_DATA, write_result, write_section  # noqa: E402

STUDENT = "smollm2-135m-instruct"
SECTIONS = ("esnli", "cqa_text")
KEYS = ("subset", "steps", "batch_size", "seq_len", "lr", "test", "teacher_records", "k_shot", "teacher_tokens",
        "jobs")
BUDGETS = {
    "letter": dict(subset=500, steps=40, batch_size=16, seq_len=256, lr=1e-4, test=None, teacher_records=500,
                   k_shot=4, teacher_tokens=128, jobs=2),
    "cpu": dict(subset=None, steps=120, batch_size=16, seq_len=192, lr=1e-4, test=1000, teacher_records=300,
                k_shot=4, teacher_tokens=96, jobs=2),
    "cuda": dict(subset=None, steps=800, batch_size=32, seq_len=192, lr=1e-4, test=1000, teacher_records=150,
                 k_shot=4, teacher_tokens=96, jobs=4),
    "smoke": dict(subset=40, steps=2, batch_size=2, seq_len=192, lr=1e-4, test=6, teacher_records=2, k_shot=2,
                  teacher_tokens=32, jobs=2),
}


def _env(a: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, **({"OMP_NUM_THREADS": "1"} if a.jobs > 1 else {})}


def _slimkit(a: argparse.Namespace, *args: str, log: Path | None = None) -> str:
    cmd = [str(Path(sys.executable).parent / "slimkit"), *args]
    print("+", " ".join(cmd), flush=True)
    with open(log, "a") if log else open(os.devnull, "w") as err:
        return subprocess.run(cmd, check=True, env=_env(a), stdout=subprocess.PIPE, stderr=err, text=True).stdout


def _subset(path: Path, records: list, n: int | None, seed: int = 0, first: bool = False) -> Path:
    """A task file of N records (all when N is None): a seeded sample sorted by id, or the FIRST N."""
    from compress.rationale.tasks import write_task

    if not path.is_file():
        n = len(records) if n is None else min(n, len(records))
        chosen = records[:n] if first else sorted(random.Random(seed).sample(records, n), key=lambda r: r.id)
        write_task(chosen, path)
    return path


def _train_and_eval(work: Path, name: str, task: Path, teachers: list[str], rationales: list[Path],
                    a: argparse.Namespace, after: Future | None = None) -> dict:
    out, result = work / name, work / f"{name}.eval.json"
    if not result.is_file():
        if after is not None:
            after.result()  # e.g. the teacher's rationales
        start = time.perf_counter()
        if not (out / "slimkit.json").is_file():
            _slimkit(a, "rationale", "train", STUDENT, "--task", str(task), "-o", str(out),
                     "--tokens", str(a.steps * a.batch_size * a.seq_len), "--seq-len", str(a.seq_len),
                     "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--seed", "0", "--save-every", "10",
                     "--resume", *(["--answer-format", a.answer_format] if a.answer_format != "letter" else []),
                     *(["--teacher-name", *teachers] if teachers else []),
                     *(["--rationales", *map(str, rationales)] if rationales else []), log=work / f"{name}.log")
        res = json.loads(_slimkit(a, "eval", str(out), "--task", str(a.test_file), "--json", log=work / f"{name}.log"))
        if res.get("answer_format", "letter") != a.answer_format:
            raise SystemExit(f"{out} was scored in the {res.get('answer_format')} format, not {a.answer_format}")
        res["seconds"] = round(time.perf_counter() - start, 1)  # this stage's training + evaluation
        result.write_text(json.dumps(res))
    return json.loads(result.read_text())


def _teacher_few_shot(work: Path, a: argparse.Namespace, train: list, test: list) -> dict:
    """The local teacher answering the test questions after k solved training examples: one seeded set of
    examples for every question (a fixed k-shot prompt, whose prefix llama.cpp keeps in its KV cache),
    answers in the protocol's format, scored as the students' greedy answers are."""
    out = work / "teacher.eval.json"
    if out.is_file():
        return json.loads(out.read_text())
    from compress.rationale.formats import answer_target, greedy_correct
    from compress.rationale.prompts import Prompt
    from compress.rationale.sources import make_source
    from compress.rationale.train import problem_text

    fmt, start = a.answer_format, time.perf_counter()
    source = make_source(a.teacher, max_tokens=12, chat=False, stop=("\n",))  # the answer line alone
    shots = random.Random(0).sample(train, a.k_shot)
    prefix = "".join(f"{problem_text(s, fmt)}Answer: {answer_target(s, fmt)}\n\n" for s in shots)
    correct = sum(greedy_correct(r, source.generate(Prompt("", prefix + f"{problem_text(r, fmt)}Answer:"), r), fmt)
                  for r in test)
    result = {"n": len(test), "exact_match": correct / len(test), "shots": [s.id for s in shots],
              "seconds": round(time.perf_counter() - start, 1)}
    out.write_text(json.dumps(result))
    return result


def _options(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["cqa", "esnli"], default="cqa")
    ap.add_argument("--answer-format", choices=["letter", "text"], default=None,
                    help="cqa: letter (default) or text; esnli: text (its label words)")
    ap.add_argument("--budget", choices=[b for b in BUDGETS if b != "letter"], default=None,
                    help="preset (see the docstring); default: cpu, or the letter protocol's own for cqa letter")
    ap.add_argument("--smoke", action="store_true", help="--budget smoke: prove the wiring, write no result")
    ap.add_argument("--subset", type=int, default=None, help="training records (seeded sample; default all)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps of every variant")
    ap.add_argument("--seq-len", type=int, default=None, help="window; longer examples are left out and counted")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--test", type=int, default=None, help="test questions (esnli: seeded; cqa: the first N)")
    ap.add_argument("--teacher-records", type=int, default=None, help="training records the local teacher explains")
    ap.add_argument("--teacher", default=None, help="local GGUF teacher (zoo name or .gguf)")
    ap.add_argument("--k-shot", type=int, default=None)
    ap.add_argument("--teacher-tokens", type=int, default=None, help="max tokens of a teacher rationale")
    ap.add_argument("--jobs", type=int, default=None, help="stages run at once (one thread each when > 1)")
    ap.add_argument("--work", type=Path, default=Path("build/bench_rationale"))
    a = ap.parse_args(argv)
    a.answer_format = a.answer_format or ("text" if a.task == "esnli" else "letter")
    if a.task == "esnli" and a.answer_format != "text":
        ap.error("the e-SNLI protocol answers with the label words: --answer-format text")
    a.section = None if (a.task, a.answer_format) == ("cqa", "letter") else "esnli" if a.task == "esnli" else "cqa_text"
    a.budget = "smoke" if a.smoke else a.budget or ("letter" if a.section is None else "cpu")
    explicit_test = a.test is not None
    for key, value in BUDGETS[a.budget].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.task == "cqa" and not explicit_test and a.budget in ("cpu", "cuda"):
        a.test = None  # CommonsenseQA: its whole test split (1221), as the letter protocol
    if a.teacher is None:
        from compress import zoo

        qwen = "qwen2.5-coder-0.5b-instruct"
        a.teacher = qwen if a.section is not None and qwen in zoo.ZOO else "gemma3-270m"
    # not the protocol: never written as the result
    a.smoke = a.budget == "smoke" or a.steps < 20 or (a.test is not None and a.test < 100)
    return a


def _work_dir(a: argparse.Namespace) -> Path:
    """--work itself for the letter protocol (its caches since the first version), else a directory per
    section and budget; protocol.json there holds the options, and a rerun with other options is refused."""
    work = a.work.resolve() / (f"{a.section or 'cqa'}-{a.budget}" if a.section or a.budget != "letter" else "")
    work.mkdir(parents=True, exist_ok=True)
    protocol = {k: getattr(a, k) for k in (*KEYS, "task", "answer_format", "teacher")}
    path = work / "protocol.json"
    if path.is_file() and (old := json.loads(path.read_text())) != protocol:
        changed = sorted(k for k in protocol if old.get(k) != protocol[k])
        raise SystemExit(f"{work} was made with other options ({', '.join(changed)}); use another --work or delete it")
    path.write_text(json.dumps(protocol, indent=1))
    return work


def run(a: argparse.Namespace) -> dict:
    from compress.rationale.tasks import load_task

    work = _work_dir(a)
    start = time.perf_counter()
    train_all = load_task(a.task, "train").records
    test_all = load_task(a.task, "test").records
    full = _subset(work / f"{a.task}_train_{a.subset or len(train_all)}.jsonl", train_all, a.subset)
    quarter = _subset(work / f"{a.task}_train_{(a.subset or len(train_all)) // 4}.jsonl",
                      load_task(str(full)).records, (a.subset or len(train_all)) // 4)
    a.test_file = _subset(work / f"{a.task}_test_{a.test or len(test_all)}.jsonl", test_all, a.test,
                          first=a.task == "cqa")
    test = load_task(str(a.test_file)).records
    gen = work / f"rationales-{Path(a.teacher).stem if a.teacher.endswith('.gguf') else a.teacher}.jsonl"
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        # resumes: only records missing from the cache are generated (the first --teacher-records, by id)
        generated = pool.submit(_slimkit, a, "rationale", "generate", "--task", str(full), "--teacher", a.teacher,
                                "--name", "local", "--k-shot", str(a.k_shot), "--limit", str(a.teacher_records),
                                "--max-tokens", str(a.teacher_tokens), "--answer-format", a.answer_format,
                                "-o", str(gen), log=work / "generate.log")
        jobs = {
            "label_only": pool.submit(_train_and_eval, work, "label_only", full, [], [], a),
            "step_by_step": pool.submit(_train_and_eval, work, "step_by_step", full, ["palm"], [], a),
            "label_only_25": pool.submit(_train_and_eval, work, "label_only_25", quarter, [], [], a),
            "step_by_step_25": pool.submit(_train_and_eval, work, "step_by_step_25", quarter, ["palm"], [], a),
        }
        teacher_job = pool.submit(_teacher_few_shot, work, a, train_all, test)
        # last, so that no worker sits waiting for the rationales while other stages could run
        jobs["multi_teacher"] = pool.submit(_train_and_eval, work, "multi_teacher", full, ["palm", "local"], [gen], a,
                                            generated)
        v = {k: f.result() for k, f in jobs.items()}
        teacher = teacher_job.result()
    return _metrics(a, work, full, test, v, teacher, gen, time.perf_counter() - start)


def _metrics(a: argparse.Namespace, work: Path, full: Path, test: list, v: dict, teacher: dict, gen: Path,
             wall: float) -> dict:
    from compress.rationale.generate import read_cache
    from compress.rationale.tasks import load_task

    cache = read_cache(gen)
    consistent = sum(1 for e in cache if e.get("consistent") and e.get("rationale"))

    def acc(r: dict) -> float:
        return round(r.get("choice_accuracy", r["exact_match"]), 4)

    n_train = len(load_task(str(full)))
    local = {"generated": len(cache), "consistent": consistent, "k_shot": a.k_shot}
    common = {
        "acc_label_only": acc(v["label_only"]), "acc_step_by_step": acc(v["step_by_step"]),
        "acc_multi_teacher": acc(v["multi_teacher"]), "acc_teacher": round(teacher["exact_match"], 4),
        "data_efficiency": [
            {"fraction": 0.25, "acc_label_only": acc(v["label_only_25"]),
             "acc_step_by_step": acc(v["step_by_step_25"])},
            {"fraction": 1.0, "acc_label_only": acc(v["label_only"]), "acc_step_by_step": acc(v["step_by_step"])}],
        "exact_match": {k: round(r["exact_match"], 4) for k, r in v.items()},
        "teacher": {"source": a.teacher, "k_shot": a.k_shot, "metric": "exact match of the few-shot answer"},
    }
    if a.section is None:  # the letter protocol's keys, as since its first version
        return {"student": STUDENT, "task": "cqa", "train_subset": a.subset, "test_questions": len(test),
                "steps_per_variant": a.steps, "batch_size": a.batch_size, "seq_len": a.seq_len, "lr": a.lr, "seed": 0,
                "local_rationales": local, **common, "wall_seconds": round(wall, 1),
                # since this work directory's first stage began (its training subset was written): all invocations
                "elapsed_seconds": round(time.time() - full.stat().st_mtime, 1), "jobs": a.jobs,
                "load_avg": os.getloadavg()}
    return {**common, "steps": a.steps, "examples": n_train, "seconds": round(time.time() - full.stat().st_mtime, 1),
            "student": STUDENT, "task": a.task, "answer_format": a.answer_format,
            "choice_score": v["label_only"].get("choice_score"), "test_questions": len(test),
            "test_subset": f"random.Random(0).sample of the test split, {len(test)} records, sorted by id"
            if a.task == "esnli" else f"the first {len(test)} of the test split",
            "budget": {"name": a.budget, **{k: getattr(a, k) for k in KEYS}, "seed": 0},
            "local_rationales": {"records": min(a.teacher_records, n_train), **local}, "wall_seconds": round(wall, 1),
            "stage_seconds": {k: r.get("seconds") for k, r in v.items()} | {"teacher": teacher.get("seconds")},
            "tokens_per_s": _tokens_per_s(work), "load_avg": os.getloadavg()}


def _tokens_per_s(work: Path) -> dict:
    """Each variant's training speed as its trainer recorded it (slimkit.json, last stage)."""
    out = {}
    for hist in sorted(work.glob("*/slimkit.json")):
        stage = (json.loads(hist.read_text()).get("stages") or [{}])[-1]
        out[hist.parent.name] = round(float((stage.get("metrics") or {}).get("tokens_per_s", 0)), 1)
    return out


def write(a: argparse.Namespace, metrics: dict) -> Path:
    """The letter protocol's metrics at the top (the other sections kept), or one section merged into the
    existing result file with its own provenance (the top-level commit and date stay the letter run's)."""
    path = RESULTS / "rationale.json"
    doc = json.loads(path.read_text()) if path.is_file() else None
    if a.section is None:
        kept = {k: doc["metrics"][k] for k in SECTIONS if doc and k in doc.get("metrics", {})}
        return write_result("rationale", {**metrics, **kept})
    return write_section("rationale", (a.section,), metrics)


def main() -> None:
    a = _options()
    if not (SHARED_DATA / "rationale" / a.task).is_dir():
        sys.exit(f"bench_rationale: ../shared/data/rationale/{a.task} is missing")
    metrics = run(a)
    if a.smoke:
        print(json.dumps(metrics, indent=1))
        print(f"bench_rationale: a {a.budget} run ({a.steps} steps, {a.test} questions) is not the protocol: "
              "no result written")
        return
    print(f"wrote {write(a, metrics)}")


if __name__ == "__main__":
    main()
