# The two entry points: `make demo` (dvc repro of the offline profile) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.vaura-installed

.PHONY: demo test venv clean-venv stack-up stack-down lint

$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt "torch==2.14.1" "torchvision==0.29.1" "torchaudio==2.11.0"
	$(PIP) install -q --no-deps -c constraints.txt -r requirements-nodeps.txt
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vaura.cli demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

clean-venv:
	rm -rf $(VENV)
