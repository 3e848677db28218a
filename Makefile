# Everything a new machine needs is installed by these targets themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck pytest chaos mutate bench bench-quick drain clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The demo: a few thousand jobs on SQLite with a progress bar, then the HTTP service.
run: install
	$(PY) examples/demo.py

## ruff, mypy (strict) and the whole test suite.
test: lint typecheck pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples reliability
	$(VENV)/bin/ruff format --check src tests benchmarks examples reliability

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest

## One worker process draining 20,000 no-op jobs on SQLite (URL=... for another backend).
URL ?= sqlite:///$(CURDIR)/benchmarks/.drain.db
drain: install
	$(PY) benchmarks/drain.py --url '$(URL)'

## The reliability harness, full form: kill -9 storms, SIGTERM, poison jobs, frozen workers and
## backend faults on every backend; prints jobs lost/duplicated and recovery times.
chaos: install
	$(PY) -m reliability

## The mutation check: plants each bug the suite was once blind to (issue 25) in a temporary
## copy of the tree and shows the tests that guard it now fail (needs the local services).
mutate: install
	$(PY) tests/mutations.py

## offload and its peers side by side (peers go into benchmarks/.peers-venv); results in
## benchmarks/results/. bench-quick: 2,000 jobs, one run each, a couple of minutes.
bench: install
	$(PY) benchmarks/compare.py

bench-quick: install
	$(PY) benchmarks/compare.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache examples/demo.db* benchmarks/.drain.db*
