# prunekit — one entry point for users, developers and CI.
#   make demo   create .venv, install the dataset where apt is available, run the quickstart config
#   make test   create .venv, install prunekit with test extras, lint, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DATA   := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
JOBS   ?= 2

.PHONY: demo test lint bench dataset clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

dataset:
	@if [ ! -f $(DATA) ] && [ -z "$$PRUNEKIT_DATA" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian package dataset-fashion-mnist"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST not found: put the four IDX files in a folder and set PRUNEKIT_DATA"; exit 2; fi; \
	fi

demo: $(STAMP) dataset
	$(VENV)/bin/prunekit run configs/quickstart.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

test: $(STAMP) lint
	OMP_NUM_THREADS=1 PRUNEKIT_NO_PROGRESS=1 $(PY) -m pytest -q -n $(JOBS) --durations=15

bench: $(STAMP)
	$(PY) bench/bench_cost.py --out bench/results/cost.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
