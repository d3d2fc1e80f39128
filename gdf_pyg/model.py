r"""GDF-Net: backbone -> region nodes -> graph aggregation -> semantic hash layer."""
from __future__ import annotations

import logging
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .aggregation import GraphAggregation
from .graph import GraphBuilder
from .backbone import FeatureBackbone
from .config import GDFNetConfig
from .nodes import AttentionPartNodes, SpatialNodes

log = logging.getLogger(__name__)

__all__ = ["GDFNet", "GDFOutput", "HashHead", "RegionGraphEncoder", "binarize"]


class GDFOutput(NamedTuple):
    """What :meth:`GDFNet.forward` returns.

    Attributes:
        codes: tanh-relaxed hash codes :math:`(B, K)` in :math:`(-1, 1)`.
        logits: class scores computed from the codes :math:`(B, C)`.
        features: the fused image features fed to the hash layer :math:`(B, D)`.
    """

    codes: Tensor
    logits: Tensor
    features: Tensor


def binarize(codes: Tensor) -> Tensor:
    r"""Binary codes :math:`\operatorname{sign}(\mathbf{h}) \in \{-1, +1\}`, with :math:`0 \mapsto +1`."""
    return torch.where(codes >= 0, torch.ones_like(codes), -torch.ones_like(codes))


class HashHead(nn.Module):
    r"""Semantic hash layer and the classifier on its codes.

    .. math::
        \mathbf{h} = \tanh\big(\mathbf{W}_h\,\mathrm{dropout}(\mathrm{BN}(\mathbf{f})) + \mathbf{b}_h\big), \qquad
        \mathbf{z} = \mathbf{W}_c\,\mathbf{h} + \mathbf{b}_c

    The batch normalisation standardises each feature over the batch, so the hash layer
    sees the differences between images whatever the scale and the shared offset of the
    features (globally pooled features of a frozen backbone are nearly constant across
    images until standardised).

    Shapes:
        - **input:** features :math:`(B, D)`
        - **output:** codes :math:`(B, K)`, logits :math:`(B, C)`
    """

    def __init__(self, in_channels: int, bits: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be a positive integer, got {bits}")
        self.in_channels, self.bits, self.num_classes = in_channels, bits, num_classes
        self.norm = nn.BatchNorm1d(in_channels)
        self.dropout = nn.Dropout(dropout)
        self.hash = nn.Linear(in_channels, bits)
        self.classifier = nn.Linear(bits, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.hash.reset_parameters()
        self.classifier.reset_parameters()

    def forward(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        codes = torch.tanh(self.hash(self.dropout(self.norm(features))))
        return codes, self.classifier(codes)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, bits={self.bits}, num_classes={self.num_classes})"


class RegionGraphEncoder(nn.Module):
    r"""Everything between the backbone and the hash layer: feature map to image features.

    ``head="gdf"``: region nodes, graph aggregation and (``fuse_global``) concatenation with
    the globally average-pooled map; ``head="global"``: the pooled map alone.

    Shapes:
        - **input:** feature map :math:`(B, C, H, W)`
        - **output:** image features :math:`(B, D)`, :math:`D` = :attr:`out_channels`
    """

    def __init__(self, config: GDFNetConfig, channels: int, feature_size: Tuple[int, int]) -> None:
        super().__init__()
        self.fuse_global = config.fuse_global
        self.nodes: Optional[nn.Module] = None
        self.aggregation: Optional[GraphAggregation] = None
        if config.head == "gdf":
            nc, ac = config.nodes, config.aggregation
            self.nodes = SpatialNodes(nc.grid_size) if nc.kind == "spatial" else AttentionPartNodes(channels, nc.num_parts)
            config.check_nodes(self.nodes.num_nodes(feature_size))
            self.aggregation = GraphAggregation(
                channels, ac.hidden_channels, ac.num_layers, conv=ac.conv, graph=GraphBuilder.from_config(config.graph),
                norm=ac.norm, act=ac.act, dropout=ac.dropout, residual=ac.residual, readout=ac.readout,
                conv_kwargs={"heads": ac.heads} if ac.conv == "gat" else None,
            )
            self.out_channels = self.aggregation.out_channels + (channels if self.fuse_global else 0)
        else:
            self.out_channels = channels

    def forward(self, fmap: Tensor) -> Tensor:
        pooled = fmap.mean(dim=(2, 3))
        if self.aggregation is None:
            return pooled
        nodes = self.nodes(fmap)
        graph_feat, _ = self.aggregation(nodes.x, nodes.batch, nodes.pos, nodes.grid_size, nodes.num_graphs)
        return torch.cat([graph_feat, pooled], dim=1) if self.fuse_global else graph_feat


class GDFNet(nn.Module):
    r"""Graph-based Discriminative Features network for fine-grained hashing
    (Sun, Lang, Xu, Liu, Zhou, Signal Processing: Image Communication 110, 2022).

    .. code-block:: text

        images -> backbone stage -> feature map F (B, C, H, W)
            -> region nodes (cells or attention parts) -> graph (kNN, grid, ...)
            -> message passing (GraphAggregation) -> readout g (B, D_g)
            -> [g || GAP(F)] -> hash layer -> codes h (B, K) -> classifier (B, C_cls)

    With ``head="global"`` the graph branch is skipped: ``GAP(F)`` feeds the same hash
    head (the no-graph baseline).

    Args:
        config (GDFNetConfig): the model's configuration; validated here.

    Shapes:
        - **input:** images :math:`(B, 3, S, S)` normalised with :attr:`mean` / :attr:`std`
        - **output:** :class:`GDFOutput` (codes :math:`(B, K)`, logits, features)
    """

    def __init__(self, config: Optional[GDFNetConfig] = None) -> None:
        super().__init__()
        config = config or GDFNetConfig()
        config.validate()
        self.config = config
        bb = config.backbone
        self.backbone = FeatureBackbone(bb.name, pretrained=bb.pretrained, weights_file=bb.weights_file,
                                        out_index=bb.out_index)
        self.feature_size = self.backbone.feature_size(config.img_size)
        self.encoder = RegionGraphEncoder(config, self.backbone.channels, self.feature_size)
        self.feature_dim = self.encoder.out_channels
        self.head = HashHead(self.feature_dim, config.bits, config.num_classes, config.hash_dropout)

    @property
    def aggregation(self) -> Optional[GraphAggregation]:
        return self.encoder.aggregation

    @property
    def mean(self) -> Tuple[float, ...]:
        return self.backbone.mean

    @property
    def std(self) -> Tuple[float, ...]:
        return self.backbone.std

    @property
    def bits(self) -> int:
        return self.config.bits

    def head_modules(self) -> nn.ModuleList:
        """Everything after the backbone (trained alone in frozen-backbone mode)."""
        return nn.ModuleList([self.encoder, self.head])

    def forward_features(self, images: Tensor) -> Tensor:
        """Backbone feature map :math:`(B, C, H, W)`."""
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return self.backbone(images)

    def forward_head(self, fmap: Tensor) -> GDFOutput:
        """Everything after the backbone, from a (possibly cached) feature map."""
        features = self.encoder(fmap)
        codes, logits = self.head(features)
        return GDFOutput(codes, logits, features)

    def forward(self, images: Tensor) -> GDFOutput:
        return self.forward_head(self.forward_features(images))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        r"""Binary codes :math:`(B, K)` in :math:`\{-1, +1\}` (evaluation mode, no gradient)."""
        was_training = self.training
        self.eval()
        try:
            return binarize(self(images).codes)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode_features(self, fmap: Tensor) -> Tensor:
        r"""Binary codes from cached feature maps (evaluation mode)."""
        was_training = self.training
        self.eval()
        try:
            return binarize(self.forward_head(fmap).codes)
        finally:
            self.train(was_training)

    def __repr__(self) -> str:
        c = self.config
        graph = "none" if self.aggregation is None else f"{c.nodes.kind} nodes, {c.graph.method} graph, {c.aggregation.conv}"
        return f"{self.__class__.__name__}({self.backbone!r}, {graph}, bits={c.bits}, num_classes={c.num_classes})"
