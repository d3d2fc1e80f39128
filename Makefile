# The two commands of the README. Each sets up .venv first when needed (scripts/setup.sh).
.PHONY: setup demo test bench
PY := .venv/bin/python

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m gdf_pyg.cli demo $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

bench: setup
	benchmarks/run_all.sh $(ARGS)
