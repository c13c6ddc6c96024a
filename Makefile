# slimkit: `make run` sets up .venv and runs the default job; `make test` runs the tests.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/default

.PHONY: install run test test-prereqs bench clean fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

# The default recipe (slimkit/recipes/default.yaml); --resume continues or skips what an earlier
# `make run` finished. Scale it up with SET="--set distill.tokens=400000".
run: $(STAMP)
	$(BIN)/slimkit run -o $(RUN_DIR) --resume $(SET)

# The ssh / adb transport tests run a real OpenSSH server and the real adb client (Debian packages).
# As root with apt-get (our machines, CI) they are installed when missing; elsewhere those tests skip.
test-prereqs:
	@if ! { [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v adb >/dev/null; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends openssh-server openssh-client adb >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends openssh-server openssh-client adb >/dev/null; } || \
	    echo "note: could not install openssh-server/adb; the ssh/adb transport tests will skip"; \
	  else echo "note: openssh-server/adb missing and not root with apt-get; the ssh/adb transport tests will skip"; fi; \
	fi

test: $(STAMP) test-prereqs
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python scripts/bench_export.py
	$(BIN)/python scripts/bench_prune.py
	$(BIN)/python scripts/bench_devices.py
	$(BIN)/python scripts/bench_distill.py
	$(BIN)/python scripts/bench_onnx.py
	$(BIN)/python scripts/bench_quant.py
	$(BIN)/python scripts/bench_qad.py
	$(BIN)/python scripts/bench_default_run.py
	$(BIN)/python scripts/render_benchmarks.py

clean:
	rm -rf $(VENV) runs

# A longer fuzz campaign than the one `make test` runs (scripts/fuzz.py; seeded, about 40 minutes).
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz.py --mutants 20000 --seed 1 --budget-s 2400
