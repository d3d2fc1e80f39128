"""Models built from :mod:`gdf_pyg.nn` layers."""
from .gdfnet import GDFNet, GDFNetConfig, GDFOutput, RegionGraphEncoder

__all__ = ["GDFNet", "GDFNetConfig", "GDFOutput", "RegionGraphEncoder"]
