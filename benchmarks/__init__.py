"""gdf-pyg's benchmarks: each module is a script run from the repository's root as
``python -m benchmarks.<name>``, writing into ``benchmarks/results/<name>/``. What they share lives
in :mod:`benchmarks.settings` (data sets, weights, the cpu preset as they train it) and
:mod:`benchmarks.common` (timing, memory, tables, plots, ledgers). See ``benchmarks/README.md``."""
