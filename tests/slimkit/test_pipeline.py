"""`slimkit run`: a tiny recipe through every stage, resume after SIGKILL, recipe errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from compress.errors import SlimkitError  # noqa: E402
from slimkit.pipeline import load_recipe, run  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from conftest import TRAIN_TEXT, tiny_llama

    from compress.checkpoint import save

    root = tmp_path_factory.mktemp("pipeline")
    save(tiny_llama(seed=0), root / "teacher")
    (root / "data.txt").write_text(TRAIN_TEXT * 3)
    return root


def _recipe(root: Path, name: str, stages: str, teacher: Path | None = None) -> Path:
    path = root / name
    path.write_text("stages:\n" + f"  - load: {{source: {teacher or 'smollm2-135m-instruct'}}}\n" + stages)
    return path


TRAIN = ("  - prune: {{target-params: 0.75, method: magnitude}}\n"
         "  - distill: {{data: [{data}], tokens: {dt}, seq-len: 64, batch-size: 4, lr: 1.0e-3, save-every: 1}}\n"
         "  - qat: {{plan: q4_0, data: [{data}], tokens: 512, seq-len: 64, batch-size: 4, lr: 1.0e-3, save-every: 1}}\n"
         "  - export-gguf: {{id: student-gguf}}\n")


def _slimkit_run(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slimkit.cli", "run", *args], env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_tiny_recipe_runs_every_stage(teacher, tmp_path):
    from compress.rationale.tasks import TaskRecord, write_task

    data = teacher / "data.txt"
    task = write_task([TaskRecord(f"q{i}", f"Which word is number {i}?", str(i), tuple(str(j) for j in range(i, i + 3)),
                                  rationales={"palm": f"The number {i} comes first."}) for i in range(12)],
                      tmp_path / "task.jsonl")
    recipe = _recipe(tmp_path, "tiny.yaml", teacher=teacher / "teacher", stages=TRAIN.format(data=data, dt=1024) + (
        "  - export-onnx: {id: student-onnx, precision: int4}\n"
        "  - export-gguf: {id: teacher-gguf, input: teacher, type: F16}\n"
        f"  - eval: {{text: {data}, ctx: 64, max-chunks: 4}}\n"
        "  - profile: {devices: [local, raspberry-pi-5], repetitions: 1}\n"
        f"  - rationale: {{task: {task}, teacher-name: [palm], tokens: 1024, seq-len: 256, batch-size: 4, lr: 1.0e-3}}\n"
        "  - package-ollama: {input: student-gguf, name: tiny-student}\n"))
    start = time.perf_counter()
    proc = _slimkit_run(str(recipe), "-o", str(tmp_path / "run"))
    out, _ = proc.communicate(timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, out
    assert seconds < 120, f"the tiny recipe took {seconds:.0f} s"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    status = {k: v["status"] for k, v in manifest["stages"].items() if not k.startswith("_")}
    assert set(status.values()) == {"finished"} and len(status) == 11, status
    assert manifest["stages"]["rationale"]["metrics"]["heldout_ppl"] > 1
    st = manifest["stages"]
    run_dir = tmp_path / "run"
    assert (run_dir / st["student-gguf"]["output"]).is_file() and (run_dir / "10-package-ollama" / "ollama").is_dir()
    evals = st["eval"]["metrics"]
    assert len(evals) == 3 and all(v["ppl"] > 1 for v in evals.values())  # student GGUF + ONNX, teacher
    assert any(k.endswith("@raspberry-pi-5") and v["kind"] == "prediction" for k, v in st["profile"]["metrics"].items())
    assert st["qat"]["metrics"]["step"] == 2 and st["distill"]["inputs"]  # input hashes recorded
    report = (run_dir / "report.md").read_text()
    assert "05-student-onnx/onnx" in report and "raspberry-pi-5" in report
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # Pareto plot + loss curves, self-contained
    # a second --resume run skips every finished stage
    again = _slimkit_run(str(recipe), "-o", str(run_dir), "--resume")
    out2, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and out2.count("unchanged since the last run: skipped") == 10, out2


def _tensors(run_dir: Path) -> dict[str, bytes]:
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    out = {f"gguf:{t.name}": np.asarray(t.data).tobytes()
           for t in gguf.GGUFReader(run_dir / "05-student-gguf" / "model.gguf").tensors}
    for stage in ("03-distill", "04-qat"):
        for k, v in load_file(run_dir / stage / "model" / "model.safetensors").items():
            out[f"{stage}:{k}"] = v.numpy().tobytes()
    return out


def _kill_when(proc: subprocess.Popen, ready) -> None:
    deadline = time.time() + 240
    while not ready():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the run never reached the kill point"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its stage subprocess, mid-stage
    proc.wait()


@pytest.mark.parametrize("kill_in", ["training", "export"])
def test_resume_after_sigkill_gives_the_same_artifacts(teacher, tmp_path, kill_in):
    recipe = _recipe(tmp_path, "r.yaml", "  - prune: {target-params: 0.9, method: magnitude}\n"
                     + TRAIN.format(data=teacher / "data.txt", dt=2048), teacher / "teacher")
    full = _slimkit_run(str(recipe), "-o", str(tmp_path / "full"))
    assert full.wait(timeout=300) == 0, full.stdout.read()
    cut = tmp_path / "cut"
    proc = _slimkit_run(str(recipe), "-o", str(cut))
    if kill_in == "training":
        _kill_when(proc, lambda: list((cut / "03-distill").glob("model.state/checkpoints/step-000003")))
    else:
        _kill_when(proc, lambda: (cut / "05-student-gguf" / "stage.log").is_file())
    manifest = json.loads((cut / "manifest.json").read_text())
    stage = "distill" if kill_in == "training" else "student-gguf"
    assert manifest["stages"][stage]["status"] == "running"  # never marked finished with partial outputs
    assert not (cut / "05-student-gguf" / "model.gguf").exists()
    resumed = _slimkit_run(str(recipe), "-o", str(cut), "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "[prune-1] unchanged since the last run: skipped" in out
    a, b = _tensors(tmp_path / "full"), _tensors(cut)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a[k] != b.get(k)][:3]


def test_recipe_errors_name_the_line_before_any_work(teacher, tmp_path):
    bad_stage = _recipe(tmp_path, "a.yaml", "  - prune: {target-params: 0.75}\n  - quantise: {}\n")
    with pytest.raises(SlimkitError, match=r"a\.yaml:4: unknown stage 'quantise'"):
        load_recipe(bad_stage)
    bad_option = _recipe(tmp_path, "b.yaml", "  - prune: {target-params: 0.75}\n  - distill: {tokenz: 5}\n")
    with pytest.raises(SlimkitError, match=r"b\.yaml:4: stage 'distill' \(distill\) has no option 'tokenz'"):
        run(load_recipe(bad_option), tmp_path / "run-b")
    bad_value = _recipe(tmp_path, "c.yaml", "  - qat: {plan: q9_9, tokens: 5}\n")
    with pytest.raises(SlimkitError, match=r"c\.yaml:3: .*invalid choice: 'q9_9'"):
        run(load_recipe(bad_value), tmp_path / "run-c")
    with pytest.raises(SlimkitError, match="no stage named 'distil'"):
        load_recipe(bad_option, ["distil.tokens=5"])
    assert not (tmp_path / "run-b").exists() and not (tmp_path / "run-c").exists()
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli", "run", str(bad_stage), "-o", str(tmp_path / "r")],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_set_overrides_and_default_recipe_is_valid(tmp_path):
    recipe = load_recipe(None, ["distill.tokens=1000", "qat.plan=q5_0", "profile.skip=true"])
    by = {s.name: s for s in recipe.stages}
    assert recipe.source == "smollm2-135m-instruct"
    assert by["distill"].options["tokens"] == 1000 and by["qat"].options["plan"] == "q5_0" and by["profile"].skip
    from slimkit.recipe import check_stage as _check_stage

    for i, s in enumerate(recipe.stages):  # every default stage parses with its verb's own parser
        if s.kind not in ("load",):
            _check_stage(s, [t.name for t in recipe.stages[:i]], recipe.path)


def test_without_shared_data_training_samples_from_the_teacher(teacher, tmp_path, monkeypatch):
    import slimkit.rundir as rundir

    monkeypatch.setattr(rundir, "SHARED_DATA", tmp_path / "absent")
    recipe = _recipe(tmp_path, "s.yaml", teacher=teacher / "teacher", stages=(
        "  - distill: {data: ['{shared_data}/text/a.txt.gz'], tokens: 64}\n"
        "  - export-gguf: {id: g}\n"
        "  - eval: {text: '{shared_data}/text/b.txt.gz'}\n"))
    r = load_recipe(recipe)
    warnings: list[str] = []
    fallback = rundir.resolve_paths(r, tmp_path / "run", warnings.append)
    by = {s.name: s for s in r.stages}
    assert "data" not in by["distill"].options  # the trainer then samples a corpus from the teacher
    assert by["eval"].options["text"] == str(fallback) and len(warnings) == 2
    rundir.sample_text(str(teacher / "teacher"), fallback, warnings.append, tokens=256)
    assert len(fallback.read_text()) > 100


def test_calibrated_stage_options_parse_as_their_verbs(tmp_path):
    """export-gguf and qat stages take --calib/--method/--init like the CLI (lists become repeats)."""
    from slimkit.recipe import check_stage as _check_stage

    path = _recipe(tmp_path, "cal.yaml", "  - qat: {plan: q4_0, tokens: 64, init: gptq, calib: [a.txt, b.txt]}\n"
                   "  - export-gguf: {type: Q4_K_M, calib: [a.txt], method: gptq+imatrix, calib-tokens: 4096}\n")
    recipe = load_recipe(path)
    for i, s in enumerate(recipe.stages):
        if s.kind != "load":
            _check_stage(s, [t.name for t in recipe.stages[:i]], recipe.path)
    bad = _recipe(tmp_path, "bad.yaml", "  - export-gguf: {type: Q4_0, method: awq}\n")
    recipe = load_recipe(bad)
    with pytest.raises(SlimkitError, match=r"bad\.yaml:3: .*invalid choice: 'awq'"):
        _check_stage(recipe.stages[-1], [t.name for t in recipe.stages[:-1]], recipe.path)


def _train_log(run_dir: Path) -> list[int]:
    log = run_dir / "02-distill" / "model.state" / "train_log.jsonl"
    return [r["step"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]


def test_more_tokens_extend_a_finished_run_and_a_changed_input_starts_over(teacher, tmp_path):
    """`--set distill.tokens=N` on a finished run continues the distillation from its last step;
    a changed upstream stage (same shapes, other weights) discards the distillation's checkpoints."""
    recipe = _recipe(tmp_path, "x.yaml", teacher=teacher / "teacher", stages=(
        "  - prune: {target-params: 0.75, method: random}\n"
        f"  - distill: {{data: [{teacher / 'data.txt'}], tokens: 1024, seq-len: 64, batch-size: 4, lr: 1.0e-3}}\n"))
    run_dir = tmp_path / "run"
    first = _slimkit_run(str(recipe), "-o", str(run_dir))
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert _train_log(run_dir) == [1, 2, 3, 4]
    longer = _slimkit_run(str(recipe), "-o", str(run_dir), "--resume", "--set", "distill.tokens=2048")
    out, _ = longer.communicate(timeout=300)
    assert longer.returncode == 0, out
    assert "[prune] unchanged" in out and _train_log(run_dir) == [1, 2, 3, 4, 5, 6, 7, 8]
    history = json.loads((run_dir / "02-distill" / "model" / "slimkit.json").read_text())
    assert history["stages"][-1]["metrics"]["step"] == 8
    # random pruning of another seed: the same shapes, other weights
    changed = _slimkit_run(str(recipe), "-o", str(run_dir), "--resume", "--set", "distill.tokens=2048",
                           "--set", "prune.seed=1")
    out, _ = changed.communicate(timeout=300)
    assert changed.returncode == 0, out
    assert "discarding the checkpoints" in out and _train_log(run_dir) == [1, 2, 3, 4, 5, 6, 7, 8]
