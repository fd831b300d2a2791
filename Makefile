# rcompile — every target works on a machine with only Python 3.11 and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    := out

.DEFAULT_GOAL := help
.PHONY: help install demo test lint bench docs clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv and install rcompile with its test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# setuptools warns on every editable install of a package-dir mapping (rcompile.passes is
	@# passes/): the log is kept in .venv/install.log and shown only when the install fails
	$(BIN)/pip install --quiet -e '.[test]' > $(VENV)/install.log 2>&1 || \
		{ cat $(VENV)/install.log; exit 1; }
	touch $@

demo: install  ## synthesise a 1 % (5:1) chip for the MNIST example, build, verify, compare
	$(BIN)/python examples/demo.py $(OUT)

test: install  ## run the whole test suite, lint and type checks
	$(BIN)/pytest
	$(BIN)/ruff check rcompile passes tests benchmarks examples
	$(BIN)/mypy

lint: install  ## ruff and mypy only
	$(BIN)/ruff check rcompile passes tests benchmarks examples
	$(BIN)/mypy

bench: install  ## speed targets, PASS/MISS table (BENCH='--json FILE' or '--quick' passes options)
	$(BIN)/python benchmarks/run.py $(BENCH)

docs: install  ## regenerate docs/cli.md from the click commands (a test checks it is current)
	$(BIN)/python -m rcompile.clidoc > docs/cli.md

clean:  ## remove build outputs (keeps .venv)
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
