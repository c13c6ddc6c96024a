"""The CLI's subcommands as data: each verb's flags are a tuple of `Flag`s (argparse's own keywords),
from which slimkit.cli builds its parsers and slimkit.recipe turns a recipe stage (a dict of options)
into the verb's command line and its config, without importing the CLI or reading argparse's
internals. One module per group of verbs holds its flags, its `*_config(args)` builders (parsed
options -> the verb's frozen config, slimkit.configs) and its command functions."""
from __future__ import annotations

import argparse
import importlib
from typing import Any, Callable, NamedTuple


class Flag(NamedTuple):
    names: tuple[str, ...]     # "--tokens" / ("-o", "--output") / "source" (positional)
    kwargs: dict[str, Any]     # argparse.ArgumentParser.add_argument's keywords

    @property
    def option(self) -> str | None:
        """The long option (--name), or None for a positional argument."""
        return next((n for n in self.names if n.startswith("--")), None)

    @property
    def repeated(self) -> bool:
        return self.kwargs.get("action") == "append"

    @property
    def switch(self) -> bool:
        return self.kwargs.get("action") in ("store_true", "store_false")


def flag(*names: str, **kwargs: Any) -> Flag:
    return Flag(names, kwargs)


def add_flags(parser: argparse.ArgumentParser, flags: tuple[Flag, ...]) -> argparse.ArgumentParser:
    for f in flags:
        parser.add_argument(*f.names, **f.kwargs)
    return parser


class Verb(NamedTuple):
    argv: tuple[str, ...]      # the CLI words (`export gguf`)
    module: str                # slimkit.commands.<module>
    flags: str                 # its attribute holding the flags
    config: str | None         # its `args -> config` builder (None: the verb has no config)


# recipe stage kind -> the CLI verb
VERBS: dict[str, Verb] = {
    "prune": Verb(("prune",), "prune", "PRUNE_FLAGS", "prune_config"),
    "distill": Verb(("distill",), "train", "DISTILL_FLAGS", "distill_config"),
    "qat": Verb(("qat",), "train", "QAT_FLAGS", "qat_config"),
    "export-gguf": Verb(("export", "gguf"), "export", "GGUF_FLAGS", "gguf_config"),
    "export-onnx": Verb(("export", "onnx"), "export", "ONNX_FLAGS", "onnx_config"),
    "eval": Verb(("eval",), "tools", "EVAL_FLAGS", None),
    "profile": Verb(("profile",), "tools", "PROFILE_FLAGS", "profile_config"),
    "package-ollama": Verb(("package", "ollama"), "tools", "OLLAMA_FLAGS", None),
    "rationale": Verb(("rationale", "train"), "rationale", "TRAIN_FLAGS", "rationale_config"),
}


def _module(kind: str) -> Any:
    return importlib.import_module(f"slimkit.commands.{VERBS[kind].module}")


def verb_flags(kind: str) -> tuple[Flag, ...]:
    return getattr(_module(kind), VERBS[kind].flags)


def verb_parser(kind: str) -> argparse.ArgumentParser:
    """The verb's parser alone (what `slimkit <verb>` parses), for checking a recipe stage."""
    return add_flags(argparse.ArgumentParser(prog=f"slimkit {' '.join(VERBS[kind].argv)}"), verb_flags(kind))


def config_builder(kind: str) -> Callable[[argparse.Namespace], Any] | None:
    name = VERBS[kind].config
    return getattr(_module(kind), name) if name else None


def print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
