"""Neural-network pieces of GDF-Net, one operator family per module: graph builders and their
backends (:mod:`.graph`), region nodes (:mod:`.nodes`), message-passing layers (:mod:`.conv`),
the aggregation encoder (:mod:`.aggregation`), the hash head (:mod:`.hash`), the losses
(:mod:`.losses`), the timm backbone (:mod:`.backbone`) and cross-process operators (:mod:`.sync`)."""
from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "AggregationConfig": ".aggregation", "GraphAggregation": ".aggregation", "PooledMLP": ".aggregation",
    "BackboneConfig": ".backbone", "FeatureBackbone": ".backbone", "FactorizedEdgeConv": ".conv",
    "make_conv": ".conv", "GraphBuilder": ".graph", "GraphConfig": ".graph", "fully_connected_graph": ".graph",
    "grid_graph": ".graph", "knn_graph": ".graph", "radius_graph": ".graph", "HashHead": ".hash",
    "HashOutput": ".hash", "GDFLoss": ".losses", "LossWeights": ".losses", "AttentionPartNodes": ".nodes",
    "NodesConfig": ".nodes", "SpatialNodes": ".nodes", "GlobalBatchNorm": ".sync",
})
