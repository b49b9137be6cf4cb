# segfold: every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
CHAIN_ARGS ?=

.PHONY: install install-dev test demo camvid lint bench

install:
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .

install-dev: install
	$(PIP) install -q -r requirements-dev.txt

# The test command of the README (and of .ci/run): the layer contracts of pyproject.toml
# ([tool.importlinter], docs/DESIGN.md "Layers"), then the suite.
test: install-dev
	lint-imports
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 $(PYTEST_ARGS)

# The main job: the whole chain on the synthetic demo competition (made on first use).
demo: install
	$(PYTHON) scripts/run_chain.py --config configs/default.yaml $(CHAIN_ARGS)

# The same chain on the real CamVid-4 data in ../shared/data/camvid4.
camvid: install
	$(PYTHON) scripts/run_chain.py --config configs/camvid4.yaml $(CHAIN_ARGS)

lint: install-dev
	$(PYTHON) -m ruff check src scripts tests

bench: install
	$(PYTHON) scripts/bench_rle.py
	$(PYTHON) scripts/bench_train.py
