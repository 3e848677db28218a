# Everything a new machine needs is installed by these targets themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck pytest chaos mutate bench bench-quick drain clean
.PHONY: bench-network
.PHONY: venv312 test-django6

# Django 6 (django.tasks) needs Python >= 3.12: a second venv for its tests (make test-django6).
PYTHON312 ?= $(firstword $(wildcard /root/.pyenv/versions/3.12*/bin/python3.12) python3.12)
VENV312   := .venv312
STAMP312  := $(VENV312)/.installed-stamp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(STAMP312): pyproject.toml
	$(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet -e '.[django,postgres]' pytest pytest-timeout pytest-asyncio
	touch $(STAMP312)

venv312: $(STAMP312)

## The demo: a few thousand jobs on SQLite with a progress bar, then the HTTP service.
run: install
	$(PY) examples/demo.py

## ruff, mypy (strict), the Django 6 road in its Python 3.12 venv, and the whole test suite.
test: lint typecheck test-django6 pytest

## tests/django_suite on Django 6 (django.tasks); the main suite runs it on the backport.
## (Which engine stores the jobs does not depend on Django's version: Redis runs in the main one.)
test-django6: venv312
	$(VENV312)/bin/python -m pytest -p no:cacheprovider tests/django_suite -k "not redis"

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

## worker processes in network namespaces behind a delay proxy (root; docs/scaling.md)
bench-network: install
	$(PY) benchmarks/network.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) $(VENV312) .mypy_cache .ruff_cache .pytest_cache examples/demo.db* benchmarks/.drain.db*
