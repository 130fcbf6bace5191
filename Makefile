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

# Every benchmark's --quick mode (each under 5 minutes, about 10 in all); each writes
# benchmarks/results/<name>_quick.json. Full runs and their commands: docs/benchmarks.md.
bench: setup
	for b in simulate prepare movielens_read featurise train_throughput train_memory unified_pareto \
		retrieval; do \
		$(PY) benchmarks/$$b.py --quick || exit 1; done

clean:
	rm -rf runs .pytest_cache .ruff_cache
