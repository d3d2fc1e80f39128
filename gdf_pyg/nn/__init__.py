"""Neural-network pieces of GDF-Net, one operator family per module: graph builders and their
backends (:mod:`.graph`), region nodes (:mod:`.nodes`), message-passing layers (:mod:`.conv`),
the aggregation encoder (:mod:`.aggregation`), the hash head (:mod:`.hash`), the losses
(:mod:`.losses`), the timm backbone (:mod:`.backbone`) and cross-process operators (:mod:`.sync`)."""
from .aggregation import AggregationConfig, GraphAggregation
from .backbone import BackboneConfig, FeatureBackbone
from .conv import FactorizedEdgeConv, make_conv
from .graph import GraphBuilder, GraphConfig, fully_connected_graph, grid_graph, knn_graph, radius_graph
from .hash import HashHead, HashOutput
from .losses import GDFLoss, LossWeights
from .nodes import AttentionPartNodes, NodesConfig, SpatialNodes
from .sync import GlobalBatchNorm

__all__ = [
    "AggregationConfig", "AttentionPartNodes", "BackboneConfig", "FactorizedEdgeConv", "FeatureBackbone", "GDFLoss",
    "GlobalBatchNorm", "GraphAggregation", "GraphBuilder", "GraphConfig", "HashHead", "HashOutput", "LossWeights",
    "NodesConfig", "SpatialNodes", "fully_connected_graph", "grid_graph", "knn_graph", "make_conv", "radius_graph",
]
