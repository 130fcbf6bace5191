# Two commands do everything on a fresh machine:
#   make pipeline   # set up, then run the end-to-end pipeline on the bundled MovieLens data
#   make test       # set up, then run the test suite
CONFIG ?= configs/movielens.yaml
PY := .venv/bin/python

.PHONY: setup pipeline test lint format bench clean

setup:
	@bash scripts/setup.sh

pipeline: setup
	$(PY) -m recsys.cli pipeline --config $(CONFIG)

test: setup
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/simulate.py && $(PY) benchmarks/prepare.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
