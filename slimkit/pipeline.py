"""`slimkit run`: a YAML recipe -> stages -> a run directory with a manifest, resumable.

A recipe is data. Each stage names a kind and takes exactly the options of its CLI verb
(`target-params: 0.5` for `slimkit prune --target-params 0.5`); the pipeline turns a stage into
that verb's command line, checks every stage against the verb's own argument parser before any
work starts, and runs it as a `slimkit` subprocess with its log in the stage directory. So the
recipe language is the CLI, and the logic stays in the library.

The recipe language (slimkit/recipe.py) is the CLI: each stage runs as its verb.

Model flow: `load` sets the current model (and the teacher); prune, distill and qat replace the
current model with their output checkpoint; export/eval/profile/package stages read the current
model or `input: <stage name>` (e.g. the teacher's export). Artifacts (GGUF files, ONNX
directories) are collected for the eval, profile and package stages and for the report.

    RUN_DIR/manifest.json       per stage: kind, argv, config hash, input and output hashes,
                                metrics, seconds, status (pending | running | finished | failed | skipped)
    RUN_DIR/NN-name/            the stage's outputs and its log (stage.log)

Outputs are written under temporary names and renamed into place by the verbs; the manifest is
rewritten atomically and marks a stage finished only after its outputs exist and are hashed, so
a run killed at any moment never has a finished stage with partial outputs. `--resume` skips
finished stages whose config and input hashes are unchanged, and reruns the others; distill and
qat stages always checkpoint (`--save-every`) and continue from their last checkpoint when only
their token budget changed (`--set distill.tokens=N` extends a finished run); when their inputs or
any other option changed, their checkpoints are discarded and the stage starts over.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.atomic import atomic_write
from compress.errors import SlimkitError
from slimkit import rundir
from slimkit.recipe import NOT_LANDED, VERBS, Recipe, Stage, check_stage, load_recipe, option_argv, stage_config
from slimkit.rundir import Manifest, config_hash, tree_hash

__all__ = ["load_recipe", "run"]

MODEL_STAGES = ("prune", "distill", "qat", "rationale")  # their output replaces the current model
TRAINING = ("distill", "qat", "rationale")


# ---- running ------------------------------------------------------------------------------------

@dataclass
class _State:
    """What the stages so far produced: the current model, the teacher, artifacts, eval results."""

    teacher: str
    model: str
    outputs: dict[str, Path] = field(default_factory=dict)  # stage name -> its main output
    artifacts: dict[str, Path] = field(default_factory=dict)  # stage name -> GGUF file / ONNX dir


def _input_of(stage: Stage, state: _State) -> str:
    if stage.input is None:
        return state.model
    if stage.input in ("teacher", "load"):
        return state.teacher
    if stage.input not in state.outputs:
        raise SlimkitError(f"stage {stage.name!r}: input {stage.input!r} is not an earlier stage")
    return str(state.outputs[stage.input])


def plan_argv(stage: Stage, state: _State, stage_dir: Path, file: str) -> list[list[str]]:
    """The slimkit command line(s) a stage runs (several for eval/profile: one per target)."""
    opts = option_argv(stage, file)
    verb = VERBS[stage.kind]
    if stage.kind in MODEL_STAGES:
        extra = []
        if stage.kind in TRAINING:
            extra = ["--resume"] + ([] if "save-every" in stage.options else ["--save-every", "10"])
            if stage.kind == "distill" and "teacher" not in stage.options:
                extra += ["--teacher", state.teacher]
        return [[*verb, _input_of(stage, state), "-o", str(stage_dir / "model"), *opts, *extra]]
    if stage.kind == "export-gguf":
        return [[*verb, _input_of(stage, state), "-o", str(stage_dir / "model.gguf"), *opts]]
    if stage.kind == "export-onnx":
        return [[*verb, _input_of(stage, state), "-o", str(stage_dir / "onnx"), *opts]]
    if stage.kind == "package-ollama":
        gguf = _input_of(stage, state) if stage.input else str(_last_gguf(state))
        return [[*verb, gguf, "-o", str(stage_dir / "ollama"), *opts]]
    targets = _targets(stage, state)
    if stage.kind == "eval":
        return [[*verb, str(t), *opts, "--json"] for t in targets.values()]
    return [[*verb, str(t), "--device", d, *opts, "--json"] for t in targets.values() for d in _devices(stage)]


def _devices(stage: Stage) -> list[str]:
    """A profile stage's `devices:` list ("profiles" = every device profile but this host)."""
    from devices.specs import profile_names

    out: list[str] = []
    for d in stage.devices:
        out += [n for n in profile_names() if n != "local"] if d == "profiles" else [d]
    return out


def _last_gguf(state: _State) -> Path:
    ggufs = [p for p in state.artifacts.values() if p.suffix == ".gguf"]
    if not ggufs:
        raise SlimkitError("package-ollama needs an earlier export-gguf stage")
    return ggufs[-1]


def _targets(stage: Stage, state: _State) -> dict[str, Path]:
    if stage.input:
        return {stage.input: Path(_input_of(stage, state))}
    if stage.kind == "profile":
        return {n: p for n, p in state.artifacts.items() if p.suffix == ".gguf"}
    return dict(state.artifacts)


def _run_command(argv: list[str], log: Path) -> str:
    """Run `slimkit ARGV` in a subprocess (its own memory, killable); stdout returned, both logged."""
    cmd = [sys.executable, "-m", "slimkit.cli", *argv]
    with open(log, "a") as f:
        f.write(f"$ slimkit {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(proc.stdout)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        raise SlimkitError(f"`slimkit {' '.join(argv[:2])}` failed (exit {proc.returncode}): {tail[0]} (log: {log})")
    return proc.stdout


def _json_out(stdout: str) -> Any:
    start = stdout.find("{")
    return json.loads(stdout[start:]) if start >= 0 else {}


def _stage_output(stage: Stage, stage_dir: Path) -> Path:
    return {"export-gguf": stage_dir / "model.gguf", "export-onnx": stage_dir / "onnx",
            "package-ollama": stage_dir / "ollama"}.get(stage.kind, stage_dir / ("model" if stage.kind in MODEL_STAGES
                                                                                  else "results.json"))


def check_recipe(recipe: Recipe) -> None:
    """Check every stage's options against its verb's flags, then every stage's config (what `run`
    does before any work starts)."""
    stages = [(i, s) for i, s in enumerate(recipe.stages) if s.kind in VERBS and not s.skip]
    for i, stage in stages:
        check_stage(stage, [s.name for s in recipe.stages[:i]], recipe.path)
    for _, stage in stages:
        stage_config(stage, recipe.path)


def run(recipe: Recipe, run_dir: Path, resume: bool = False, log=print) -> dict[str, Any]:
    """Run (or resume) a recipe into RUN_DIR; returns the manifest."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise SlimkitError(f"{run_dir} holds an earlier run; pass --resume to continue it or choose another -o")
    state = _State(recipe.source, recipe.source)
    fallback_text = rundir.resolve_paths(recipe, run_dir, log)
    check_recipe(recipe)   # every stage is checked before any work starts
    run_dir.mkdir(parents=True, exist_ok=True)
    if fallback_text is not None and not fallback_text.is_file():
        rundir.sample_text(recipe.source, fallback_text, log)
    manifest = Manifest(run_dir / "manifest.json")
    manifest.doc.update(recipe=recipe.path, teacher=recipe.source)
    start = time.perf_counter()
    for stage in recipe.stages:
        _run_stage(stage, state, run_dir, manifest, recipe.path, log)
    manifest.doc["wall_seconds"] = round(time.perf_counter() - start, 1)
    manifest.put("_run", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return manifest.doc


def _advance(stage: Stage, state: _State, output: Path) -> None:
    state.outputs[stage.name] = output
    if stage.kind in MODEL_STAGES:
        state.model = str(output)
    elif stage.kind in ("export-gguf", "export-onnx"):
        state.artifacts[stage.name] = output


def _run_stage(stage: Stage, state: _State, run_dir: Path, manifest: Manifest, file: str, log) -> None:
    stage_dir = run_dir / stage.dirname
    if stage.kind == "load":
        manifest.put(stage.name, kind="load", status="finished", source=state.teacher, index=stage.index)
        return
    if stage.kind in NOT_LANDED or stage.skip:
        why = NOT_LANDED.get(stage.kind, "skip: true in the recipe")
        log(f"warning: skipping stage {stage.name}: {why}")
        manifest.put(stage.name, kind=stage.kind, status="skipped", reason=why, index=stage.index)
        return
    argvs = plan_argv(stage, state, stage_dir, file)
    inputs = sorted({a for argv in argvs for a in argv if Path(a).exists() and not str(a).startswith(str(stage_dir))})
    input_hashes = {a: tree_hash(Path(a)) for a in inputs}
    config = config_hash([[str(x).replace(str(run_dir), "RUN") for x in argv] for argv in argvs])
    output = _stage_output(stage, stage_dir)
    old = manifest.get(stage.name)
    if (old.get("status") == "finished" and old.get("config_sha256") == config and old.get("inputs") == input_hashes
            and old.get("output_sha256") == tree_hash(output)):
        log(f"[{stage.name}] unchanged since the last run: skipped")
        _advance(stage, state, output)
        return
    resume_key = _resume_key(argvs, input_hashes, run_dir) if stage.kind in TRAINING else None
    if resume_key is not None and old.get("resume_key") not in (None, resume_key):
        _discard_state(stage, output, log)
    stage_dir.mkdir(parents=True, exist_ok=True)
    manifest.put(stage.name, kind=stage.kind, index=stage.index, status="running", argv=argvs,
                 config_sha256=config, inputs=input_hashes, output=str(output.relative_to(run_dir)),
                 **({"resume_key": resume_key} if resume_key else {}))
    log(f"[{stage.name}] slimkit {' '.join(argvs[0][:len(VERBS[stage.kind])])} ...")
    t0 = time.perf_counter()
    try:
        results = [_run_command(argv, stage_dir / "stage.log") for argv in argvs]
    except BaseException:
        manifest.put(stage.name, status="failed", seconds=round(time.perf_counter() - t0, 1))
        raise
    metrics = _metrics(stage, argvs, results, output)
    if stage.kind in ("eval", "profile"):
        atomic_write(output, json.dumps(metrics, indent=2, default=str).encode())
    seconds = round(time.perf_counter() - t0, 1)
    manifest.put(stage.name, status="finished", seconds=seconds, metrics=metrics, output_sha256=tree_hash(output))
    log(f"[{stage.name}] finished in {seconds:.0f} s")
    _advance(stage, state, output)


def _resume_key(argvs: list[list[str]], inputs: dict[str, str | None], run_dir: Path) -> str:
    """What a training stage's checkpoints depend on: its inputs and options, less the token budget
    (a larger budget continues the run: compress.distill.trainer)."""
    masked = [[("N" if i and a[i - 1] == "--tokens" else str(x).replace(str(run_dir), "RUN")) for i, x in enumerate(a)]
              for a in argvs]
    return config_hash([masked, sorted(inputs.items())])


def _discard_state(stage: Stage, output: Path, log) -> None:
    """An upstream stage or an option changed: the training state describes another run."""
    import shutil

    from compress.distill.state import state_dir

    state = state_dir(output)
    if state.exists():
        log(f"[{stage.name}] its inputs or options changed: discarding the checkpoints in {state}")
        shutil.rmtree(state)


def _metrics(stage: Stage, argvs: list[list[str]], stdouts: list[str], output: Path) -> dict[str, Any]:
    if stage.kind == "eval":
        return {argv[1]: _json_out(out) for argv, out in zip(argvs, stdouts)}
    if stage.kind == "profile":
        return {f"{argv[1]}@{argv[3]}": _json_out(out) for argv, out in zip(argvs, stdouts)}
    if stage.kind in MODEL_STAGES:
        history = json.loads((output / "slimkit.json").read_text())
        return history["stages"][-1].get("metrics", {}) if history.get("stages") else {}
    if stage.kind == "export-gguf":
        report = output.with_name(output.name + ".validation.json")
        return {"file_mb": round(output.stat().st_size / 1e6, 2),
                **({"validation": json.loads(report.read_text())} if report.is_file() else {})}
    if stage.kind == "export-onnx":
        size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file() and p.suffix in (".onnx", ".data"))
        return {"file_mb": round(size / 1e6, 2)}
    return {}
