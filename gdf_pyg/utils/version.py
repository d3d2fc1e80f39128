"""The package's version, where every floor may read it (``gdf_pyg.__version__`` re-exports it)."""
__version__ = "0.10.0"
