# One project-owned, idempotent setup step; everything else runs inside .venv.
# `make demo`: set up, then the main job on the embedded demo data.
# `make test`: set up, then the tests (what CI runs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cyborgs-installed
DEMO_ROOT ?= datasets/demo
DEMO_OUT ?= output/demo

.PHONY: install test test-slow lint demo demo-data clean-venv

install: $(STAMP)

# torch/torchvision first and alone: pip takes these exact versions from local disk, and any
# later requirement that names torch is then already satisfied (no multi-GB download).
$(STAMP): requirements.txt setup.py tools/install_detectron2.py $(wildcard tools/patches/*.patch)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

test-slow: install
	$(PY) -m pytest -q -m "slow" --run-slow tests

lint: install
	$(VENV)/bin/ruff check cyborgs tools tests benchmarks
	$(VENV)/bin/ruff format --check cyborgs tools tests benchmarks

demo-data: install
	$(PY) tools/make_demo_data.py --root $(DEMO_ROOT) --preset demo

demo: demo-data
	bash tools/run_demo.sh $(DEMO_ROOT) $(DEMO_OUT)

clean-venv:
	rm -rf $(VENV)
