"""Fixtures for the distillation tests, imported by the test modules (a second conftest.py would
shadow tests/conftest.py under the module name `conftest`): tiny llama student/teacher saved as
HF directories, a text file, and torch limited to one thread (the tiny models run much faster
single-threaded on a shared, oversubscribed machine)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2] / "conftest.py"


def root_conftest():
    """tests/conftest.py loaded under its own name, whatever `conftest` means in sys.modules."""
    spec = importlib.util.spec_from_file_location("slimkit_tests_root_conftest", _ROOT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOT = root_conftest()


@pytest.fixture(autouse=True)
def one_thread(one_thread):  # noqa: F811 (tests/conftest.py's, made automatic for the distillation tests)
    yield


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """(student dir, teacher dir, data file): tiny llamas with different seeds, same tokenizer."""
    from compress.checkpoint import save

    root = tmp_path_factory.mktemp("distill")
    save(ROOT.tiny_llama(0), root / "student")
    save(ROOT.tiny_llama(1), root / "teacher")
    (root / "data.txt").write_text(ROOT.TRAIN_TEXT * 2)
    return root / "student", root / "teacher", root / "data.txt"
