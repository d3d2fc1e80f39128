"""Models built from :mod:`gdf_pyg.nn` layers: GDF-Net and its shared-encoder variant."""
from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "GDFNet": ".gdfnet", "GDFNetConfig": ".gdfnet", "GDFOutput": ".gdfnet", "RegionGraphEncoder": ".gdfnet",
    "SharedEncoderGDFNet": ".gdfnet",
})
