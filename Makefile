# Every target sets up .venv itself: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch/torchvision are pinned to the releases that install from local wheels on the
# project's machines; on other machines pip fetches the same versions from PyPI.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-slow bench gpu-check clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[test,postgres]' $(TORCH)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dmlbench run

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m dmlbench.bench.benchmarks
	$(PY) -m dmlbench.protocols.benchmarks

# The GPU figures of issue 12 item 7 in one run (< 8 min on one GPU; synthetic data, random
# weights, no internet): printed and written to runs/gpu-check.{json,md}. CPU fallback without CUDA.
gpu-check: $(STAMP)
	$(PY) -m dmlbench.bench.benchmarks.gpu_check --out runs/gpu-check

clean:
	rm -rf $(VENV) runs .pytest_cache
