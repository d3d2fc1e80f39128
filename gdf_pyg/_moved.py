"""Module names that moved, kept working until :data:`REMOVED_IN` with a warning, as timm does
for its moved modules: the flat names of gdf-pyg 0.1 (``gdf_pyg.graph``, ``gdf_pyg.metrics``,
...) and the modules of ``gdf_pyg.training`` that 0.8 moved to :mod:`gdf_pyg.engine`.
``import gdf_pyg.graph`` returns :mod:`gdf_pyg.nn.graph` itself (loaded only when asked for) and
warns once with a ``FutureWarning`` that names the new module."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Optional, Sequence

__all__ = ["MOVED", "REMOVED_IN", "install"]

REMOVED_IN = "0.9"
MOVED = {
    "gdf_pyg.aggregation": "gdf_pyg.nn.aggregation",
    "gdf_pyg.backbone": "gdf_pyg.nn.backbone",
    "gdf_pyg.checkpoint": "gdf_pyg.engine.checkpoint",
    "gdf_pyg.config": "gdf_pyg.training.config",
    "gdf_pyg.training.amp": "gdf_pyg.engine.amp",
    "gdf_pyg.training.checkpoint": "gdf_pyg.engine.checkpoint",
    "gdf_pyg.training.distributed": "gdf_pyg.engine.distributed",
    "gdf_pyg.training.encoding": "gdf_pyg.engine.encoding",
    "gdf_pyg.conv": "gdf_pyg.nn.conv",
    "gdf_pyg.graph": "gdf_pyg.nn.graph",
    "gdf_pyg.index": "gdf_pyg.retrieval.index",
    "gdf_pyg.losses": "gdf_pyg.nn.losses",
    "gdf_pyg.metrics": "gdf_pyg.retrieval.metrics",
    "gdf_pyg.model": "gdf_pyg.models.gdfnet",
    "gdf_pyg.nodes": "gdf_pyg.nn.nodes",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        warnings.warn(f"{spec.name} has moved to {self.target}; the old name stops working in gdf-pyg {REMOVED_IN}",
                      FutureWarning, stacklevel=2)
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        """The target module is already executed."""


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(MOVED[fullname]))


def install() -> None:
    """Registers the aliases (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
