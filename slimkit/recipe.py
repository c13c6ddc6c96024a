"""Recipes for `slimkit run`: YAML -> stages, each checked against its verb's flags and config.

A stage is `- KIND: {options}`; the keys `id` (the stage's name in the run directory, the
manifest and `--set`; default: its kind), `input` (an earlier stage's id, or `teacher`) and
`skip` belong to the pipeline, `devices` to profile stages; every other key is an option of the
kind's verb (`target-params: 0.5` is `slimkit prune --target-params 0.5` and
`PruneConfig(target_params=0.5)`): the options are a config dict, checked by the verb's flags
(slimkit.commands, data shared with the CLI) and its config's own validation (`stage_config`)
before any work starts. Errors name the recipe line. slimkit.pipeline runs the stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import SlimkitError
from slimkit.commands import VERBS as COMMANDS
from slimkit.commands import config_builder, verb_flags, verb_parser

RECIPES = Path(__file__).resolve().parent / "recipes"
VERBS: dict[str, list[str]] = {kind: list(v.argv) for kind, v in COMMANDS.items()}  # kind -> the CLI verb
NOT_LANDED: dict[str, str] = {}  # stage kinds whose verb has not landed yet: skipped with a warning
PIPELINE_KEYS = ("kind", "id", "input", "skip", "devices")  # stage keys that are not CLI options


@dataclass
class Stage:
    index: int
    name: str
    kind: str
    options: dict[str, Any]
    line: int  # line of the stage in the recipe file (1-based), for error messages
    input: str | None = None
    skip: bool = False
    devices: list[str] = field(default_factory=lambda: ["local"])  # profile stages only

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}-{self.name}"


@dataclass
class Recipe:
    path: str
    source: str  # the load stage's model: the teacher
    stages: list[Stage] = field(default_factory=list)


# ---- recipe -> stages -------------------------------------------------------------------------

def _stage_lines(text: str) -> list[int]:
    import yaml

    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        return []   # not a mapping: load_recipe says what a recipe is
    stages = next((v for k, v in root.value if getattr(k, "value", None) == "stages"), None)
    if not isinstance(stages, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in stages.value]


def load_recipe(path: str | Path | None, sets: list[str] = ()) -> Recipe:
    """Parse a recipe (default: the embedded default.yaml) and apply --set overrides."""
    import yaml

    file = Path(path) if path else RECIPES / "default.yaml"
    if not file.is_file():
        named = RECIPES / f"{path}.yaml"
        if not named.is_file():
            raise SlimkitError(f"recipe {path} not found; give a YAML file or one of: "
                               f"{', '.join(p.stem for p in sorted(RECIPES.glob('*.yaml')))}")
        file = named
    text = file.read_text()
    try:
        doc = yaml.safe_load(text)
        lines = _stage_lines(text)
    except yaml.YAMLError as exc:
        raise SlimkitError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise SlimkitError(f"{file}: a recipe is a mapping with a non-empty `stages:` list")
    stages = [_stage(file, i, raw, lines[i] if i < len(lines) else 0) for i, raw in enumerate(doc["stages"])]
    names = [s.name for s in stages]
    for s in stages:
        if names.count(s.name) > 1:
            s.name = f"{s.name}-{s.index}"
    _apply_sets(stages, sets, file)
    loads = [s for s in stages if s.kind == "load"]
    if len(loads) != 1 or stages[0].kind != "load":
        raise SlimkitError(f"{file}: the first stage must be the only `load` stage (e.g. `- load: {{source: NAME}}`)")
    return Recipe(str(file), str(loads[0].options.get("source", "")), stages)


def _stage(file: Path, i: int, raw: Any, line: int) -> Stage:
    where = f"{file}:{line}"
    if isinstance(raw, dict) and len(raw) == 1 and "kind" not in raw:
        (kind, options), = raw.items()
        if options is not None and not isinstance(options, dict):
            raise SlimkitError(f"{where}: the options of stage {kind!r} must be a mapping "
                               f"(`- {kind}: {{option: value}}`), not {type(options).__name__}")
        options = dict(options or {})
    elif isinstance(raw, dict) and "kind" in raw:
        options = dict(raw)
        kind = options.pop("kind")
    else:
        raise SlimkitError(f"{where}: a stage is `- KIND: {{options}}` or a mapping with `kind:`")
    kind = str(kind).replace("_", "-").replace(" ", "-")
    if kind not in VERBS and kind != "load" and kind not in NOT_LANDED:
        raise SlimkitError(f"{where}: unknown stage {kind!r}; stages: load, {', '.join(VERBS)}, {', '.join(NOT_LANDED)}")
    name = str(options.pop("id", kind))
    options = {str(k).replace("_", "-"): v for k, v in options.items()}
    stage = Stage(i, name, kind, options, line, options.pop("input", None), bool(options.pop("skip", False)))
    if kind == "profile":
        devices = options.pop("devices", options.pop("device", ["local"]))
        stage.devices = [str(d) for d in (devices if isinstance(devices, list) else [devices])]
    return stage


def _apply_sets(stages: list[Stage], sets: list[str], file: Path) -> None:
    import yaml

    for item in sets:
        key, sep, value = item.partition("=")
        stage_name, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise SlimkitError(f"--set {item!r}: expected STAGE.OPTION=VALUE, e.g. distill.tokens=200000")
        matches = [s for s in stages if s.name == stage_name]
        if not matches:
            raise SlimkitError(f"--set {item!r}: no stage named {stage_name!r} in {file} "
                               f"(stages: {', '.join(s.name for s in stages)})")
        parsed = yaml.safe_load(value) if value else ""
        option = option.replace("_", "-")
        for s in matches:
            if option == "skip":
                s.skip = bool(parsed)
            elif option == "input":
                s.input = str(parsed)
            else:
                s.options[option] = parsed


# ---- stage -> command line and config ----------------------------------------------------------

def option_argv(stage: Stage, file: str) -> list[str]:
    """The stage's options as the verb's flags (slimkit.commands); unknown options fail naming the recipe line."""
    flags = {f.option: f for f in verb_flags(stage.kind) if f.option}
    argv: list[str] = []
    for key, value in stage.options.items():
        option = f"--{key}"
        spec = flags.get(option)
        if spec is None or option == "--output":
            known = sorted(o[2:] for o in flags if o != "--output")
            raise SlimkitError(f"{file}:{stage.line}: stage {stage.name!r} ({stage.kind}) has no option {key!r}; "
                               f"options: {', '.join(known)}")
        if spec.switch:
            if value:
                argv.append(option)
        elif spec.repeated:
            for v in value if isinstance(value, list) else [value]:
                argv += [option, str(v)]
        elif isinstance(value, list):
            argv += [option, *(str(v) for v in value)]
        elif value is not None:
            argv += [option, str(value)]
    return argv


def check_argv(kind: str, argv: list[str], where: str) -> Any:
    """Parse with the verb's own parser (types, choices, required flags) without running it."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return verb_parser(kind).parse_args(argv)
    except SystemExit:
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "invalid options"
        raise SlimkitError(f"{where}: {message.split(': error: ', 1)[-1]}") from None


def _parse(stage: Stage, file: str) -> Any:
    """The stage's options parsed by its verb's flags, placeholder paths standing for its input and output."""
    out = [] if stage.kind in ("eval", "profile") else ["-o", "OUT"]
    return check_argv(stage.kind, ["IN", *out, *option_argv(stage, file)], f"{file}:{stage.line}")


def stage_config(stage: Stage, file: str) -> Any:
    """The verb's config (slimkit.configs) that the stage's options describe, validated; None for the
    verbs without one (eval, package-ollama)."""
    where = f"{file}:{stage.line}"
    args = _parse(stage, file)
    build = config_builder(stage.kind)
    try:
        return build(args) if build else None
    except SlimkitError as exc:
        raise SlimkitError(f"{where}: {exc}") from None


def check_stage(stage: Stage, earlier: list[str], file: str) -> None:
    """Options, types and choices against the verb's flags, with placeholder paths (the config's own
    checks: stage_config)."""
    where = f"{file}:{stage.line}"
    if stage.input is not None and stage.input not in ("teacher", "load", *earlier):
        raise SlimkitError(f"{where}: stage {stage.name!r}: input {stage.input!r} is not an earlier stage")
    _parse(stage, file)
    if stage.kind == "profile":
        from devices.specs import profile_names

        unknown = [d for d in stage.devices if d not in ("local", "profiles", *profile_names()) and "://" not in d]
        if unknown:
            raise SlimkitError(f"{where}: unknown device {unknown[0]!r}; devices: local, profiles (all), "
                               f"{', '.join(profile_names())}, ssh://..., adb://...")
