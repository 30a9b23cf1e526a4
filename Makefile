# Two commands matter: `make demo` and `make test`. Both build .venv on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests read the offline data mirror that sits beside the clone.
export TRAININGLOOP_DATA ?= $(abspath ../shared/data)
# Tests never download: a missing file must fail, not hang on a network that is not there.
export TRAININGLOOP_NO_DOWNLOAD ?= 1

.PHONY: install test test-slow demo bench bench-peers lint mutate

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned: an unpinned torch pulls the multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

demo: install
	$(VENV)/bin/trainingloop run digits

bench: install
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/import_time.py
	$(PY) benchmarks/compare.py
	$(PY) benchmarks/trackers.py

# Peers (Lightning, Keras 3 on torch, Ignite, Accelerate) live in their own environment.
PEERS := .venv-peers
$(PEERS)/.installed: pyproject.toml
	test -x $(PEERS)/bin/python || python3 -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q torch==2.13.0
	$(PEERS)/bin/python -m pip install -q -e . lightning keras pytorch-ignite accelerate
	touch $@

bench-peers: $(PEERS)/.installed
	$(PEERS)/bin/python benchmarks/compare.py --python $(PEERS)/bin/python

# Mutation testing of the pure modules (a dev tool, not part of `make test`; see [tool.mutmut]
# in pyproject.toml). One OpenMP thread: mutmut forks a child per mutant, and with torch's
# default threads here 122 of the first 615 mutants hung until their timeout (none with one).
mutate: install
	$(PY) -m pip install -q -e ".[dev]"
	rm -rf mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results
