r"""Message-passing layers for the aggregation module, and their selection by name."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Type, Union

import torch
from torch import Tensor
from torch_geometric.nn import MLP, EdgeConv, GATConv, GCNConv, GraphConv, SAGEConv
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.typing import Adj, OptTensor
from torch_geometric.index import index2ptr
from torch_geometric.utils import degree

__all__ = ["CONVS", "FactorizedEdgeConv", "make_conv", "segment_ptr"]


def segment_ptr(index: Tensor, dim_size: int) -> OptTensor:
    """CSR pointers of ``index`` (``index2ptr``) when it is sorted, as every builder of
    :mod:`gdf_pyg.nn.graph` returns edges grouped by receiving node; else ``None``.

    With pointers PyG aggregates by segments, whose backward is several times cheaper on CPU
    than the scatter it falls back to otherwise.
    """
    if index.numel() == 0 or bool((index[1:] < index[:-1]).any()):
        return None
    return index2ptr(index, dim_size)


_GATHER_BUDGET = 2**24  # entries (64 MB of float32) of gathered neighbour features at a time


class _NeighbourMax(torch.autograd.Function):
    """``max_j src[nbr[i, j]]`` per node and feature, for a fixed number of neighbours.

    Saves only the winning source row of each output entry, so the backward pass scatters
    :math:`N F` gradients instead of the :math:`N k F` of a gather followed by ``amax``.
    """

    @staticmethod
    def forward(ctx, src: Tensor, nbr: Tensor) -> Tensor:
        if not ctx.needs_input_grad[0]:
            # Inference: one gather and one max per chunk of nodes (about twice as fast on a CPU as
            # k gathers and k maxima), the (rows, k, F) temporary held to _GATHER_BUDGET entries.
            k, f = nbr.size(1), src.size(1)
            parts = [src.index_select(0, part.reshape(-1)).view(len(part), k, f).amax(1)
                     for part in nbr.split(max(1, _GATHER_BUDGET // max(1, k * f)))]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        values, arg = src[nbr].max(dim=1)  # (N, F)
        ctx.save_for_backward(nbr.gather(1, arg))
        ctx.num_src = src.size(0)
        return values

    @staticmethod
    def backward(ctx, grad: Tensor):
        (winner,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.num_src, grad.size(1))
        return out.scatter_add_(0, winner, grad), None


# Our own rather than PyG's EdgeConv: with a linear edge function both maps run per node, k times
# fewer multiply-adds than EdgeConv's per-edge MLP, with the same output (tests/nn/test_conv.py).
class FactorizedEdgeConv(MessagePassing):
    r"""The edge convolution of DGCNN (`"Dynamic Graph CNN for Learning on Point Clouds"
    <https://arxiv.org/abs/1801.07829>`_) with a linear edge function, evaluated per node.

    PyG's :class:`~torch_geometric.nn.conv.EdgeConv` with
    :math:`h_{\Theta}(\mathbf{u}) = \Theta \mathbf{u} + \mathbf{b}`,
    :math:`\Theta = [\Theta_1 \; \Theta_2]`, computes

    .. math::
        \mathbf{x}^{\prime}_i = \square_{j \in \mathcal{N}(i)}
        \Theta_1 \mathbf{x}_i + \Theta_2 (\mathbf{x}_j - \mathbf{x}_i) + \mathbf{b}
        = \underbrace{(\Theta_1 - \Theta_2)\mathbf{x}_i + \mathbf{b}}_{\text{centre}}
        \;+\; \square_{j \in \mathcal{N}(i)} \Theta_2 \mathbf{x}_j

    for :math:`\square` = max or mean (for sum the centre term is multiplied by the
    in-degree; a node without neighbours gets :math:`\mathbf{0}`, as in ``EdgeConv``).
    Both linear maps run once per node instead of once per edge, so a layer costs
    :math:`O(|\mathcal{V}| F F' + |\mathcal{E}| F')` instead of
    :math:`O(|\mathcal{E}| F F')`: :math:`k` times less for a :math:`k`-NN graph, and the
    same result as ``EdgeConv(Linear(2F, F'))`` with matching weights.

    Args:
        in_channels (int): input features :math:`F`.
        out_channels (int): output features :math:`F'`.
        aggr (str): ``"max"``, ``"mean"`` or ``"add"``. (default: ``"max"``)
        bias (bool): learn :math:`\mathbf{b}`. (default: :obj:`True`)
        **kwargs: passed on to :class:`~torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F)`, edge indices
          :math:`(2, |\mathcal{E}|)` (``source_to_target``)
        - **output:** node features :math:`(|\mathcal{V}|, F')`
    """

    def __init__(self, in_channels: int, out_channels: int, aggr: str = "max", bias: bool = True, **kwargs: Any):
        if aggr not in ("max", "mean", "add", "sum"):
            raise ValueError(f"aggr must be 'max', 'mean' or 'add', got {aggr!r}")
        super().__init__(aggr=aggr, **kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.lin_centre = Linear(in_channels, out_channels, bias=bias, weight_initializer="glorot")
        self.lin_neighbour = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_centre.reset_parameters()
        self.lin_neighbour.reset_parameters()

    @torch.no_grad()
    def load_edge_conv_weight(self, weight: Tensor, bias: Tensor | None = None) -> None:
        r"""Sets the layer from the weight :math:`[\Theta_1 \; \Theta_2]` :math:`(F', 2F)` of an
        ``EdgeConv(Linear(2F, F'))``, so both compute the same function."""
        theta_1, theta_2 = weight[:, : self.in_channels], weight[:, self.in_channels:]
        self.lin_centre.weight.copy_(theta_1 - theta_2)
        self.lin_neighbour.weight.copy_(theta_2)
        if bias is not None and self.lin_centre.bias is not None:
            self.lin_centre.bias.copy_(bias)

    def forward(self, x: Tensor, edge_index: Adj, k: Optional[int] = None) -> Tensor:
        """``k``: every node receives exactly ``k`` edges, grouped by centre in node order (what
        the kNN builders return), so the neighbour lists are read as an :math:`(N, k)` view of
        ``edge_index[0]`` without checking the layout on the device. Without it the layout is
        checked (one read back from the device)."""
        neighbour = self.lin_neighbour(x)
        nbr = None
        if self.aggr == "max":
            nbr = self._regular_neighbours(edge_index, x.size(0)) if k is None else edge_index[0].view(x.size(0), k)
        if nbr is not None:
            # Fixed in-degree, edges grouped by centre (a kNN graph): a dense max.
            return _NeighbourMax.apply(neighbour, nbr) + self.lin_centre(x)
        if k is not None:  # mean or sum over a known number of neighbours per node
            gathered = neighbour.index_select(0, edge_index[0]).view(x.size(0), k, -1)
            if self.aggr == "mean":
                return gathered.mean(1) + self.lin_centre(x)
            return gathered.sum(1) + float(k) * self.lin_centre(x)
        # propagate_type: (x: Tensor)
        out = self.propagate(edge_index, x=neighbour)
        deg = degree(edge_index[1], x.size(0), dtype=x.dtype).unsqueeze(-1)
        weight = deg if self.aggr in ("add", "sum") else deg.clamp(max=1)
        return out + weight * self.lin_centre(x)

    @staticmethod
    def _regular_neighbours(edge_index: Tensor, n: int) -> OptTensor:
        """``(n, k)`` neighbour ids when every node receives ``k > 0`` edges, grouped."""
        if not isinstance(edge_index, Tensor) or n == 0 or edge_index.size(1) % n:
            return None
        k = edge_index.size(1) // n
        if k == 0 or not torch.equal(edge_index[1], torch.arange(n, device=edge_index.device).repeat_interleave(k)):
            return None
        return edge_index[0].view(n, k)

    def message(self, x_j: Tensor) -> Tensor:
        return x_j

    def aggregate(self, inputs: Tensor, index: Tensor, ptr: OptTensor = None, dim_size: Optional[int] = None) -> Tensor:
        n = dim_size if dim_size is not None else int(index.max()) + 1
        if ptr is None:
            ptr = segment_ptr(index, n)
        return super().aggregate(inputs, index, ptr=ptr, dim_size=n)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, aggr={self.aggr})"


def _edge_mlp(in_channels: int, out_channels: int, **kwargs: Any) -> MessagePassing:
    """PyG's EdgeConv with a two-layer MLP applied to every edge (the full DGCNN cost)."""
    return EdgeConv(MLP([2 * in_channels, out_channels, out_channels], norm=None), aggr=kwargs.pop("aggr", "max"))


def _gat(in_channels: int, out_channels: int, heads: int = 4, **kwargs: Any) -> MessagePassing:
    if out_channels % heads:
        raise ValueError(f"GAT needs hidden channels ({out_channels}) divisible by heads ({heads})")
    return GATConv(in_channels, out_channels // heads, heads=heads, concat=True, **kwargs)


CONVS: Dict[str, Callable[..., MessagePassing]] = {
    "edge": FactorizedEdgeConv,
    "edge_mlp": _edge_mlp,
    "gcn": GCNConv,
    "gat": _gat,
    "sage": SAGEConv,
    "graph": GraphConv,
}


def make_conv(
    conv: Union[str, Type[MessagePassing]], in_channels: int, out_channels: int, **kwargs: Any
) -> MessagePassing:
    """A message-passing layer by name (see :data:`CONVS`) or from any ``MessagePassing``
    class called as ``conv(in_channels, out_channels, **kwargs)``."""
    if isinstance(conv, str):
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; expected one of {sorted(CONVS)} or a MessagePassing class")
        return CONVS[conv](in_channels, out_channels, **kwargs)
    if isinstance(conv, type) and issubclass(conv, MessagePassing):
        return conv(in_channels, out_channels, **kwargs)
    raise TypeError(f"conv must be a name in {sorted(CONVS)} or a MessagePassing subclass, got {conv!r}")
