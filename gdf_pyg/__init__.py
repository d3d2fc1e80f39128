"""gdf-pyg: GDF-Net for graph-based fine-grained hashing on PyTorch Geometric.

The package reads as the data flow: :mod:`gdf_pyg.data` (images) -> :mod:`gdf_pyg.nn`
(backbone, region nodes, graphs, message passing, hash head, losses) -> :mod:`gdf_pyg.models`
(GDF-Net) -> :mod:`gdf_pyg.training` -> :mod:`gdf_pyg.retrieval` (metrics, index, search).
Top-level names are imported on first use, so ``import gdf_pyg.retrieval.metrics`` stays light.
"""
from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any

from ._moved import install as _install_moved_modules

# torch_geometric calls torch.jit.script at import, which this torch deprecates: a warning on
# every start that no user of gdf-pyg can act on. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

__version__ = "0.7.0"

_LAZY = {
    "GDFNet": "gdf_pyg.models.gdfnet",
    "GDFNetConfig": "gdf_pyg.models.gdfnet",
    "GDFOutput": "gdf_pyg.models.gdfnet",
    "TrainConfig": "gdf_pyg.training.config",
    "binarize": "gdf_pyg.utils.codes",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gdf_pyg' has no attribute {name!r}")


def __dir__() -> list:
    return sorted([*globals(), *_LAZY])


_install_moved_modules()
logging.getLogger(__name__).addHandler(logging.NullHandler())
