"""Fuzzed inputs never crash the process: 1000 seeded mutants of GGUF files, HF checkpoint files
(config.json, tokenizer.json, safetensors headers), recipes and imatrix files through the CLI entry
points (scripts/fuzz.py, in one child process so that a signal is seen and blamed), each ending in
exit 0 or slimkit's one-line error within 20 s; at most 2 minutes. `make fuzz` runs a longer one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_thousand_mutants_end_in_exit_0_or_a_one_line_error(tmp_path):
    summary = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz.py"), "--mutants", "1000", "--seed", "0",
                           "--budget-s", "120", "--json", str(summary)], capture_output=True, text=True, timeout=400)
    last = [line for line in proc.stdout.splitlines() if line.startswith("mutant ")][-1:]
    assert proc.returncode in (0, 1), f"the campaign died (exit {proc.returncode}) at {last}: {proc.stderr[-800:]}"
    result = json.loads(summary.read_text())
    assert result["failures"] == [], result["failures"][:5]
    assert result["mutants"] >= 1000, f"only {result['mutants']} mutants in {result['seconds']} s"
    assert set(result["by_kind"]) == {"gguf", "config", "tokenizer", "safetensors", "recipe", "imatrix"}
