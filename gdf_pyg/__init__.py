"""gdf-pyg: GDF-Net for graph-based fine-grained hashing on PyTorch Geometric."""
import logging
import warnings

# torch_geometric calls torch.jit.script at import, which this torch deprecates: a warning on
# every start that no user of gdf-pyg can act on. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from .config import GDFNetConfig  # noqa: E402
from .model import GDFNet, GDFOutput, binarize  # noqa: E402

__version__ = "0.1.0"
__all__ = ["GDFNet", "GDFNetConfig", "GDFOutput", "binarize", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
