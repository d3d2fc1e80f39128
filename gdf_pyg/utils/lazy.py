"""The one way gdf-pyg's packages export names: imported on first use (PEP 562).

A package's ``__init__`` names what it exports and the module each name lives in; nothing is
imported until a name is asked for, so importing a light module of a package (``import
gdf_pyg.retrieval.metrics``) never loads its heavy siblings (the model, timm, PyG).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> Tuple[List[str], Callable[[str], Any],
                                                                    Callable[[], List[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` exporting each name of ``exports`` from
    its module (relative to the package, e.g. ``".metrics"``)."""
    table: Dict[str, str] = dict(exports)

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        importlib.import_module(package).__dict__[name] = value  # later lookups skip this function
        return value

    def __dir__() -> List[str]:
        return sorted({*importlib.import_module(package).__dict__, *table})

    return sorted(table), __getattr__, __dir__
