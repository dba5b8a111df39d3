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
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	@# Last, and without dependencies: their metadata conflicts with the stack (protobuf<3.20, pytorchvideo), and
	@# installed earlier, pip's check at the end of the install above reports those known conflicts as ERROR.
	$(PIP) install -q --no-deps -c constraints.txt -r requirements-nodeps.txt
	@touch $(STAMP)

venv: $(STAMP)

# The offline profile end to end (`dvc repro`; a second run does nothing), then where to look.
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo ""
	@echo "Tables (paper II-IV): $(CURDIR)/reports/threshold.md conditioning.md cfg.md   metrics: $(BIN)/dvc metrics show"
	@$(BIN)/vaura ui --params params.yaml
	@echo "           (or: $(BIN)/vaura ui --serve; with the local stack, runs go to its server: make stack-up)"

# The local stack: moto S3, MLflow server, Prefect server + process worker, deployments, DVC remote.
stack-up: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/vaura stack up

stack-down: $(STAMP)
	$(BIN)/vaura stack down

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

# Unused imports, undefined names, redefinitions (pyflakes, installed with the dev extra).
lint: $(STAMP)
	$(BIN)/python -m pyflakes vaura flows tests benchmarks

clean-venv:
	rm -rf $(VENV)
