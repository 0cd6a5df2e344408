# Quick start: `make demo` and `make test`. Both create .venv on first use and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch first (CI-notes: this pair imports together on a CPU-only Linux machine); override for other platforms
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= test,data,music,distributed,lm-eval

.PHONY: install demo test gpu-test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m eaglefinch.demo

# the Triton interpreter must be switched on before triton is imported: its tests get their own process
test: $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/triton
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/triton
	# the same kernel tests with every chunk on the level kernels (the default sends only chunks of
	# strong decay there)
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/triton --wkv-launch max_span=-1

# on a CUDA machine: the GPU tests and the WKV benchmark (results go in BENCHMARKS.md)
gpu-test: $(STAMP)
	$(PY) -m pytest -q tests/gpu tests/triton

bench: $(STAMP)
	$(PY) bench/wkv.py

clean:
	rm -rf $(VENV) runs *.egg-info
