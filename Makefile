# The two commands of the README. Each sets up .venv first when needed (scripts/setup.sh): the demo
# needs only torch and the package; the tests and benchmarks also compile torch-cluster (once, cached).
.PHONY: setup setup-cluster demo test bench
PY := .venv/bin/python

setup:
	@scripts/setup.sh

setup-cluster:
	@scripts/setup.sh --with-cluster

demo: setup
	$(PY) -m gdf_pyg.cli demo $(ARGS)

test: setup-cluster
	$(PY) -m pytest -q $(ARGS)

bench: setup-cluster
	benchmarks/run_all.sh $(ARGS)
