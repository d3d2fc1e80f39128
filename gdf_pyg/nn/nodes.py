r"""Region nodes: turn a backbone feature map into graph nodes with positions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.checks import choice, require

__all__ = ["AttentionPartNodes", "NodeBatch", "NodesConfig", "SpatialNodes", "grid_positions", "make_nodes"]


@dataclass
class NodesConfig:
    """How regions become nodes: ``spatial`` (feature-map cells) or ``parts`` (attention)."""

    kind: str = "spatial"
    grid_size: Optional[int] = None
    num_parts: int = 32

    def validate(self, prefix: str = "model.nodes") -> None:
        choice(self.kind, ("spatial", "parts"), f"{prefix}.kind")
        require(self.grid_size is None or self.grid_size >= 1, f"{prefix}.grid_size",
                f"must be a positive integer or null, got {self.grid_size}")
        require(self.num_parts >= 1, f"{prefix}.num_parts", f"must be >= 1, got {self.num_parts}")


@dataclass
class NodeBatch:
    r"""Nodes of a mini-batch of images, stacked PyG-style.

    Attributes:
        x: node features :math:`(N, C)`.
        batch: image id of each node :math:`(N,)`, sorted.
        pos: node positions :math:`(N, 2)` as ``(row, col)`` in :math:`[0, 1]`.
        num_graphs: number of images :math:`B`.
        grid_size: ``(h, w)`` when the nodes are the cells of an ``h x w`` grid in
            row-major order (spatial nodes), else ``None``.
        attention: attention maps :math:`(B, M, H, W)` for part nodes, else ``None``.
        nodes_per_graph: nodes of every image (all images have the same number), known even
            for an empty batch.
    """

    x: Tensor
    batch: Tensor
    pos: Tensor
    num_graphs: int
    grid_size: Optional[Tuple[int, int]] = None
    attention: Optional[Tensor] = None
    nodes_per_graph: int = 0

    def __post_init__(self) -> None:
        if not self.nodes_per_graph:
            if not self.num_graphs:
                raise ValueError("an empty NodeBatch needs nodes_per_graph: it cannot be read from the nodes")
            self.nodes_per_graph = self.x.size(0) // self.num_graphs


def grid_positions(height: int, width: int, device: Optional[torch.device] = None) -> Tensor:
    """Cell centres of an ``height x width`` grid, row-major, as ``(row, col)`` in [0, 1]."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def _batch_vector(num_graphs: int, nodes_per_graph: int, device: torch.device) -> Tensor:
    return torch.arange(num_graphs, device=device).repeat_interleave(nodes_per_graph)


class SpatialNodes(nn.Module):
    r"""One node per feature-map cell, optionally after average pooling to a coarser grid.

    .. math::
        \mathbf{x}_{b,(y,x)} = \mathbf{F}_b[:, y, x], \qquad
        \mathbf{p}_{b,(y,x)} = \big(\tfrac{y + 1/2}{h}, \tfrac{x + 1/2}{w}\big)

    Args:
        grid_size (int or tuple, optional): pool the map to this size first
            (``adaptive_avg_pool2d``). (default: :obj:`None`, keep the map's size)

    Shapes:
        - **input:** feature map :math:`(B, C, H, W)`
        - **output:** :class:`NodeBatch` with :math:`N = B h w` nodes of :math:`C` features
    """

    def __init__(self, grid_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        super().__init__()
        if isinstance(grid_size, int):
            grid_size = (grid_size, grid_size)
        if grid_size is not None and (len(grid_size) != 2 or min(grid_size) < 1):
            raise ValueError(f"grid_size must be a positive int or (h, w), got {grid_size!r}")
        self.grid_size = None if grid_size is None else (int(grid_size[0]), int(grid_size[1]))

    def reset_parameters(self) -> None:
        """No parameters."""

    def num_nodes(self, feature_size: Tuple[int, int]) -> int:
        h, w = self.grid_size or feature_size
        return h * w

    def forward(self, fmap: Tensor) -> NodeBatch:
        if self.grid_size is not None and tuple(fmap.shape[-2:]) != self.grid_size:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid_size)
        b, c, h, w = fmap.shape
        x = fmap.flatten(2).transpose(1, 2).reshape(b * h * w, c)
        pos = grid_positions(h, w, fmap.device).repeat(b, 1)
        return NodeBatch(x, _batch_vector(b, h * w, fmap.device), pos, b, grid_size=(h, w), nodes_per_graph=h * w)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(grid_size={self.grid_size})"


class AttentionPartNodes(nn.Module):
    r"""Attention part nodes by bilinear attention pooling (WS-DAN, Hu et al., 2019).

    :math:`M` attention maps :math:`\mathbf{A} = \mathrm{ReLU}(\mathrm{BN}(\mathbf{W} * \mathbf{F}))`
    (a :math:`1 \times 1` convolution) each pool one part feature, followed by the signed
    square root and :math:`\ell_2` normalisation of each part:

    .. math::
        \mathbf{f}_m = \frac{1}{HW} \sum_{y,x} A_m[y, x]\, \mathbf{F}[:, y, x], \qquad
        \mathbf{x}_m = \frac{\operatorname{sign}(\mathbf{f}_m)\sqrt{|\mathbf{f}_m| + \epsilon}}
                            {\lVert \operatorname{sign}(\mathbf{f}_m)\sqrt{|\mathbf{f}_m| + \epsilon} \rVert_2}

    Each part's position is the centroid of its attention map,
    :math:`\mathbf{p}_m = \sum_{y,x} A_m[y,x]\,\mathbf{c}_{y,x} / \sum_{y,x} A_m[y,x]`
    (the map's centre when the map is all zero).

    Args:
        in_channels (int): feature-map channels :math:`C`.
        num_parts (int): attention maps :math:`M`. (default: :obj:`32`)
        eps (float): :math:`\epsilon` of the signed square root. (default: :obj:`1e-6`)

    Shapes:
        - **input:** feature map :math:`(B, C, H, W)`
        - **output:** :class:`NodeBatch` with :math:`N = B M` nodes of :math:`C` features
    """

    def __init__(self, in_channels: int, num_parts: int = 32, eps: float = 1e-6) -> None:
        super().__init__()
        if in_channels < 1 or num_parts < 1:
            raise ValueError(f"in_channels and num_parts must be positive, got {in_channels}, {num_parts}")
        self.in_channels = in_channels
        self.num_parts = num_parts
        self.eps = eps
        self.attention = nn.Sequential(
            nn.Conv2d(in_channels, num_parts, kernel_size=1, bias=False),
            nn.BatchNorm2d(num_parts),
            nn.ReLU(inplace=True),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.attention[0].weight, nonlinearity="relu")
        self.attention[1].reset_parameters()

    def num_nodes(self, feature_size: Tuple[int, int]) -> int:
        return self.num_parts

    def forward(self, fmap: Tensor) -> NodeBatch:
        b, c, h, w = fmap.shape
        att = self.attention(fmap)  # (B, M, H, W)
        parts = torch.einsum("bmhw,bchw->bmc", att, fmap) / (h * w)
        parts = torch.sign(parts) * torch.sqrt(parts.abs() + self.eps)
        parts = F.normalize(parts, dim=-1)
        cells = grid_positions(h, w, fmap.device)  # (HW, 2)
        weights = att.flatten(2)  # (B, M, HW)
        mass = weights.sum(-1, keepdim=True)
        centre = cells.mean(0)
        pos = (weights @ cells + self.eps * centre) / (mass + self.eps)
        return NodeBatch(
            parts.reshape(b * self.num_parts, c),
            _batch_vector(b, self.num_parts, fmap.device),
            pos.reshape(b * self.num_parts, 2),
            b,
            attention=att,
            nodes_per_graph=self.num_parts,
        )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, num_parts={self.num_parts})"


def make_nodes(config: NodesConfig, in_channels: int) -> nn.Module:
    """The node module a :class:`NodesConfig` describes."""
    if config.kind == "spatial":
        return SpatialNodes(config.grid_size)
    return AttentionPartNodes(in_channels, config.num_parts)
