# segfold: every target installs what it needs first, so each works on a fresh machine.
#
# Which Python:
# - inside an active virtual environment (venv / virtualenv: VIRTUAL_ENV; conda: CONDA_PREFIX), that one;
# - otherwise the project's own environment .venv, made with `python3 -m venv` on first use and reused after
#   (a system Python under PEP 668, as on current Debian and Ubuntu, refuses pip installs outside one);
# - `make PYTHON=/path/to/python ...` names one outright.
# Installs into .venv are remembered (stamp files inside it) and redone only when a requirements file or
# pyproject.toml changes; into an active or named environment pip runs each time (it is quick when satisfied).
PYTHON3 ?= python3
VENV ?= .venv
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
CHAIN_ARGS ?=

ACTIVE_ENV := $(or $(VIRTUAL_ENV),$(CONDA_PREFIX))
ifeq ($(origin PYTHON),command line)
  OWN_VENV :=
else ifneq ($(ACTIVE_ENV),)
  PYTHON := $(ACTIVE_ENV)/bin/python
  OWN_VENV :=
else
  PYTHON := $(VENV)/bin/python
  OWN_VENV := yes
endif
PIP := $(PYTHON) -m pip

ifdef OWN_VENV
  RUNTIME := $(VENV)/.installed-runtime
  DEV := $(VENV)/.installed-dev
else
  RUNTIME := install-runtime
  DEV := install-dev-tools
  .PHONY: install-runtime install-dev-tools
endif

.PHONY: install install-dev test demo camvid lint bench

install: $(RUNTIME)

install-dev: $(DEV)

# The test command of the README (and of .ci/run): the layer contracts of pyproject.toml
# ([tool.importlinter], docs/DESIGN.md "Layers"), then the suite. pytest's exit code (5: no test collected)
# is make's.
test: $(DEV)
	$(dir $(PYTHON))lint-imports
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 $(PYTEST_ARGS)

# The main job: the whole chain on the synthetic demo competition (made on first use).
demo: $(RUNTIME)
	$(PYTHON) scripts/run_chain.py --config configs/default.yaml $(CHAIN_ARGS)

# The same chain on the real CamVid-4 data in ../shared/data/camvid4.
camvid: $(RUNTIME)
	$(PYTHON) scripts/run_chain.py --config configs/camvid4.yaml $(CHAIN_ARGS)

lint: $(DEV)
	$(PYTHON) -m ruff check src scripts tests

bench: $(RUNTIME)
	$(PYTHON) scripts/bench_rle.py
	$(PYTHON) scripts/bench_train.py
	$(PYTHON) scripts/bench_tune.py
	$(PYTHON) scripts/bench_search.py

# The project environment. A failed `python3 -m venv` (Debian without python3-venv) leaves a broken folder:
# remove it so the next call tries again.
$(VENV)/bin/python:
	@command -v $(PYTHON3) >/dev/null || { echo "error: no $(PYTHON3) on PATH; install Python 3.10 or newer" \
	  "(Debian/Ubuntu: apt-get install python3 python3-venv), or activate an environment" >&2; exit 1; }
	@$(PYTHON3) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "error: segfold needs Python" \
	  "3.10 or newer; $(PYTHON3) is $$($(PYTHON3) -V 2>&1) (make PYTHON3=python3.11 names another)" >&2; exit 1; }
	$(PYTHON3) -m venv $(VENV) || { rm -rf $(VENV); echo "error: '$(PYTHON3) -m venv $(VENV)' failed;" \
	  "on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }

$(VENV)/.installed-runtime: requirements.txt pyproject.toml $(VENV)/bin/python
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	@touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed-runtime
	$(PIP) install -q -r requirements-dev.txt
	@touch $@

install-runtime:
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .

install-dev-tools: install-runtime
	$(PIP) install -q -r requirements-dev.txt
