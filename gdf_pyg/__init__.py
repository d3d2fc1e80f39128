"""gdf-pyg: GDF-Net for graph-based fine-grained hashing on PyTorch Geometric.

The package is built in floors, each importing only from those beneath it: :mod:`gdf_pyg.utils`
-> :mod:`gdf_pyg.data` (images) -> :mod:`gdf_pyg.nn` (backbone, region nodes, graphs, message
passing, hash head, losses) -> :mod:`gdf_pyg.models` (GDF-Net) -> :mod:`gdf_pyg.engine`
(checkpoints, encoding, processes) -> :mod:`gdf_pyg.retrieval` (metrics, index, evaluation,
search) -> :mod:`gdf_pyg.training` -> the command line. Every package's names are imported on
first use, so ``import gdf_pyg.retrieval.metrics`` stays light.
"""
from __future__ import annotations

import logging
import warnings

from .utils.lazy import lazy_exports
from .utils.version import __version__

# torch_geometric calls torch.jit.script at import, which this torch deprecates: a warning on
# every start that no user of gdf-pyg can act on. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


_names, __getattr__, __dir__ = lazy_exports(__name__, {
    "GDFNet": ".models.gdfnet", "GDFNetConfig": ".models.gdfnet", "GDFOutput": ".models.gdfnet",
    "TrainConfig": ".training.config", "binarize": ".utils.codes",
})
__all__ = [*_names, "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
