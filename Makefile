# The suite's commands. `make test` is what CI runs (.ci/run).
VENV   ?= .venv
PY     := $(VENV)/bin/python
MMCV   ?= lite
TORCH_CUDA ?=
DATA   ?= data/derived
JOBS   ?= 2

.PHONY: help setup data test test-fast test-real-size demo clean-data

help:                 ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 22

setup:                ## create/update .venv with the pinned stack (MMCV=full: mmcv with ops; TORCH_CUDA=cu126|cu128|cu130)
	MMCV=$(MMCV) TORCH_CUDA=$(TORCH_CUDA) VENV=$(abspath $(VENV)) bash tools/setup_env.sh

data: setup           ## derive the semantic-segmentation and crop sets from data/tiny_coco
	$(PY) tools/prepare_tiny_coco.py --source data/tiny_coco --out $(DATA)

demo: setup           ## the whole suite on the bundled data, on the CPU (DEMO_QUICK=1: a few steps per stage)
	PYTHON=$(abspath $(PY)) bash tools/demo.sh

test: setup           ## set up if needed, lint (ruff), then run the test suite on the CPU (JOBS=2 pytest workers)
	$(PY) -m ruff check .
	$(PY) -m pytest tests -n $(JOBS) --dist loadgroup --durations=10

test-fast: setup      ## the inner loop: lint, then every test not marked slow (about a minute on 2 cores)
	$(PY) -m ruff check .
	$(PY) -m pytest tests -m "not slow" -q -n $(JOBS) --dist loadgroup

test-real-size: setup ## every production config at its real size, one step each, alone (~15 min on 2 cores)
	$(PY) -m pytest tests -m real_size -v

clean-data:           ## remove the derived datasets
	rm -rf $(DATA)
