"""gdf-pyg: GDF-Net for graph-based fine-grained hashing on PyTorch Geometric."""
import logging

from .config import GDFNetConfig
from .model import GDFNet, GDFOutput, binarize

__version__ = "0.1.0"
__all__ = ["GDFNet", "GDFNetConfig", "GDFOutput", "binarize", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
