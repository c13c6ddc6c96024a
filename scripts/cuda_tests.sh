#!/usr/bin/env bash
# The CUDA checks in one run (a few minutes on a CUDA machine; they skip without one):
# GGUF blocks on the device bit-exact with the CPU, data-free sampling beside a CUDA teacher.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -m cuda tests "$@"
