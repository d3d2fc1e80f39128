r"""The global fine-grained feature aggregation module of GDF-Net."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn
from torch_geometric.nn import aggr as pyg_aggr
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver
from torch_geometric.typing import OptTensor

from ..utils.checks import choice, require
from .conv import CONVS, FactorizedEdgeConv, make_conv, segment_ptr
from .graph import GraphBuilder

__all__ = ["ACTIVATIONS", "AggregationConfig", "GraphAggregation", "NORMS", "PooledMLP", "READOUTS", "make_norm", "make_readout"]

READOUTS = ("mean", "max", "mean_max", "attention")
NORMS = ("batch_norm", "layer_norm", "none")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "elu", "silu", "tanh")


@dataclass
class AggregationConfig:
    """The message-passing stack's settings (see :class:`GraphAggregation`)."""

    conv: str = "edge"
    hidden_channels: int = 256
    num_layers: int = 2
    norm: str = "batch_norm"
    act: str = "leaky_relu"
    dropout: float = 0.0
    residual: bool = True
    readout: str = "mean_max"
    heads: int = 4

    def validate(self, prefix: str = "model.aggregation") -> None:
        choice(self.conv, sorted(CONVS), f"{prefix}.conv")
        require(self.hidden_channels >= 1, f"{prefix}.hidden_channels", f"must be >= 1, got {self.hidden_channels}")
        require(self.num_layers >= 1, f"{prefix}.num_layers", f"must be >= 1, got {self.num_layers}")
        choice(self.norm, NORMS, f"{prefix}.norm")
        choice(self.act, ACTIVATIONS, f"{prefix}.act")
        require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout}")
        choice(self.readout, READOUTS, f"{prefix}.readout")
        require(self.heads >= 1, f"{prefix}.heads", f"must be >= 1, got {self.heads}")
        if self.conv == "gat":
            require(self.hidden_channels % self.heads == 0, f"{prefix}.hidden_channels",
                    f"must be divisible by heads={self.heads} for conv 'gat', got {self.hidden_channels}")


def make_readout(name: str, channels: int) -> Tuple[pyg_aggr.Aggregation, int]:
    """A graph readout from ``torch_geometric.nn.aggr`` and its output width."""
    if name == "mean":
        return pyg_aggr.MeanAggregation(), channels
    if name == "max":
        return pyg_aggr.MaxAggregation(), channels
    if name == "mean_max":
        return pyg_aggr.MultiAggregation(["mean", "max"], mode="cat"), 2 * channels
    if name == "attention":
        return pyg_aggr.AttentionalAggregation(gate_nn=nn.Linear(channels, 1)), channels
    raise ValueError(f"unknown readout {name!r}; expected one of {READOUTS}")


def make_norm(name: str, channels: int) -> nn.Module:
    """The normalisation ``name`` (one of :data:`NORMS`) over ``channels`` features, applied
    per row: layer norm per node (or per pooled image), not PyG's default per graph."""
    if name == "none":
        return nn.Identity()
    if name == "layer_norm":
        return normalization_resolver("layer_norm", channels, mode="node")
    return normalization_resolver(name, channels)


class GraphAggregation(nn.Module):
    r"""Global fine-grained feature aggregation (GDF-Net, Sun et al., 2022).

    Region nodes are projected to ``hidden_channels``, passed through ``num_layers``
    message-passing layers on a graph over the nodes, each followed by normalisation and
    activation and added back to its input (residual reconstruction), then read out per
    image:

    .. math::
        \mathbf{h}_i^{(0)} = \sigma\big(\mathrm{N}(\mathbf{W}_0 \mathbf{x}_i)\big), \qquad
        \mathbf{h}_i^{(l+1)} = \mathbf{h}_i^{(l)} + \sigma\Big(\mathrm{N}\big(
            \mathrm{conv}^{(l)}(\mathbf{h}^{(l)}, \mathcal{G}^{(l)})_i\big)\Big), \qquad
        \mathbf{g}_b = \mathrm{readout}\{\mathbf{h}_i^{(L)} : b(i) = b\}

    With the default ``"edge"`` conv, :math:`\mathrm{conv}(\mathbf{h}, \mathcal{G})_i =
    \max_{j \in \mathcal{N}(i)} \Theta(\mathbf{h}_i \Vert \mathbf{h}_j - \mathbf{h}_i)`
    (DGCNN's EdgeConv, see :class:`~gdf_pyg.nn.conv.FactorizedEdgeConv`). The graph
    :math:`\mathcal{G}^{(0)}` is built by ``graph`` from the input features :math:`\mathbf{x}`
    (or the positions, for the spatial constructions); for ``graph.method == "dynamic"``
    :math:`\mathcal{G}^{(l)}` is rebuilt from :math:`\mathbf{h}^{(l)}` for :math:`l \ge 1`, as
    DGCNN and the reference code do.

    Args:
        in_channels (int): node feature size :math:`F`.
        hidden_channels (int): width :math:`F_h` of the message passing. (default: :obj:`256`)
        num_layers (int): message-passing layers :math:`L`. (default: :obj:`2`)
        conv (str or type): ``"edge"``, ``"edge_mlp"``, ``"gcn"``, ``"gat"``, ``"sage"``,
            ``"graph"`` or any :class:`MessagePassing` class. (default: ``"edge"``)
        graph (GraphBuilder, optional): the graph construction.
            (default: dynamic :math:`k`-NN with :math:`k = 8`)
        norm (str): ``"batch_norm"``, ``"layer_norm"`` or ``"none"``. (default: ``"batch_norm"``)
        act (str): activation, any name PyG's ``activation_resolver`` knows.
            (default: ``"leaky_relu"``)
        dropout (float): dropout on each layer's update. (default: :obj:`0.0`)
        residual (bool): add each layer's output to its input. (default: :obj:`True`)
        readout (str): ``"mean"``, ``"max"``, ``"mean_max"`` (concatenated) or
            ``"attention"``. (default: ``"mean_max"``)
        conv_kwargs (dict, optional): extra arguments of the conv layers.

    Shapes:
        - **input:** node features :math:`(N, F)`, batch vector :math:`(N)`,
          positions :math:`(N, 2)` (optional)
        - **output:** graph features :math:`(B, F_{out})` with :math:`F_{out}` =
          :attr:`out_channels`, and node features :math:`(N, F_h)`
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 256,
        num_layers: int = 2,
        conv: Union[str, Type[MessagePassing]] = "edge",
        graph: Optional[GraphBuilder] = None,
        norm: str = "batch_norm",
        act: str = "leaky_relu",
        dropout: float = 0.0,
        residual: bool = True,
        readout: str = "mean_max",
        conv_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(f"in_channels and hidden_channels must be positive, got {in_channels}, {hidden_channels}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.conv_name = conv if isinstance(conv, str) else conv.__name__
        self.graph = graph if graph is not None else GraphBuilder()
        self.norm_name = norm
        self.residual = residual
        self.readout_name = readout

        self.input = nn.Linear(in_channels, hidden_channels)
        self.input_norm = self._norm()
        self.act = activation_resolver(act)
        self.convs = nn.ModuleList(
            make_conv(conv, hidden_channels, hidden_channels, **(conv_kwargs or {})) for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(self._norm() for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.readout, self.out_channels = make_readout(readout, hidden_channels)
        self.reset_parameters()

    def _norm(self) -> nn.Module:
        return make_norm(self.norm_name, self.hidden_channels)

    def reset_parameters(self) -> None:
        self.input.reset_parameters()
        for module in [self.input_norm, *self.convs, *self.norms, self.readout]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(
        self,
        x: Tensor,
        batch: Tensor,
        pos: OptTensor = None,
        grid_size: Optional[Tuple[int, int]] = None,
        num_graphs: Optional[int] = None,
        nodes_per_graph: Optional[int] = None,
    ) -> Tuple[Tensor, Tensor]:
        """``nodes_per_graph``: every image has that many nodes, stacked in order (regions of a
        feature map or attention parts). The graphs, the message passing and the readout then
        take their sizes from the layout: nothing is read back from the device, so on a GPU the
        forward and backward passes queue without waiting."""
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"expected node features of shape (N, {self.in_channels}), got {tuple(x.shape)}")
        if nodes_per_graph is not None:
            num_graphs = x.size(0) // nodes_per_graph
            ptr = torch.arange(0, x.size(0) + 1, nodes_per_graph, device=x.device)
            degree = self.graph.regular_degree(nodes_per_graph)
        else:
            if num_graphs is None:
                num_graphs = int(batch.max()) + 1 if batch.numel() else 0
            ptr, degree = segment_ptr(batch, num_graphs), None
        layout = {"k": degree} if degree is not None else {}
        edge_index = self.graph(x, batch, pos, grid_size, nodes_per_graph)
        h = self.act(self.input_norm(self.input(x)))
        for layer, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if layer > 0 and self.graph.is_dynamic:
                # The neighbourhoods follow the learned features; no gradient through the choice.
                edge_index = self.graph(h.detach(), batch, pos, grid_size, nodes_per_graph)
            out = conv(h, edge_index, **layout) if isinstance(conv, FactorizedEdgeConv) else conv(h, edge_index)
            update = self.dropout(self.act(norm(out)))
            h = h + update if self.residual else update
        return self.readout(h, batch, ptr=ptr, dim_size=num_graphs), h

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, "
            f"num_layers={self.num_layers}, conv={self.conv_name}, graph={self.graph.method}(k={self.graph.k}), "
            f"readout={self.readout_name})"
        )


class PooledMLP(nn.Module):
    r"""The capacity control of :class:`GraphAggregation`: its layers on the globally pooled
    feature instead of on region nodes.

    .. math::
        \mathbf{h}^{(0)} = \sigma\big(\mathrm{N}(\mathbf{W}_0 \bar{\mathbf{x}})\big), \qquad
        \mathbf{h}^{(l+1)} = \mathbf{h}^{(l)} + \sigma\big(\mathrm{N}(\mathbf{W}_{l+1} \mathbf{h}^{(l)})\big)

    with :math:`\bar{\mathbf{x}}` the pooled map, the same width, depth, normalisation,
    activation and residuals as the graph layers, and no graph.

    Shapes:
        - **input:** pooled features :math:`(B, F)`
        - **output:** :math:`(B, F_h)`
    """

    def __init__(self, in_channels: int, hidden_channels: int = 256, num_layers: int = 2, norm: str = "batch_norm",
                 act: str = "leaky_relu", dropout: float = 0.0, residual: bool = True) -> None:
        super().__init__()
        self.in_channels, self.hidden_channels, self.num_layers = in_channels, hidden_channels, num_layers
        self.out_channels = hidden_channels
        self.residual = residual
        self.input = nn.Linear(in_channels, hidden_channels)
        self.layers = nn.ModuleList(nn.Linear(hidden_channels, hidden_channels) for _ in range(num_layers))
        self.input_norm = make_norm(norm, hidden_channels)
        self.norms = nn.ModuleList(make_norm(norm, hidden_channels) for _ in range(num_layers))
        self.act = activation_resolver(act)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in [self.input, self.input_norm, *self.layers, *self.norms]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.input_norm(self.input(x)))
        for layer, norm in zip(self.layers, self.norms):
            update = self.dropout(self.act(norm(layer(h))))
            h = h + update if self.residual else update
        return h

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, num_layers={self.num_layers})"
