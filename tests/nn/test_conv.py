from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import EdgeConv, GCNConv, MessagePassing

import gdf_pyg.nn.conv as conv_module
from gdf_pyg.nn.conv import CONVS, FactorizedEdgeConv, make_conv
from gdf_pyg.nn.graph import knn_graph


@pytest.mark.parametrize("aggr", ["max", "mean", "add"])
def test_factorized_edge_conv_equals_pyg_edge_conv(aggr):
    x = torch.randn(20, 8, dtype=torch.float64)
    ei = knn_graph(x, 4)
    ei = ei[:, ei[1] != 3]  # node 3 has no neighbours: both must give 0 there
    lin = torch.nn.Linear(16, 5).double()
    ref = EdgeConv(lin, aggr=aggr)(x, ei)
    conv = FactorizedEdgeConv(8, 5, aggr=aggr).double()
    conv.load_edge_conv_weight(lin.weight, lin.bias)
    out = conv(x, ei)
    assert out.shape == (20, 5)
    torch.testing.assert_close(out, ref)
    assert torch.equal(out[3], torch.zeros(5, dtype=torch.float64))


def test_factorized_edge_conv_repr_reset_and_grad():
    conv = FactorizedEdgeConv(8, 5)
    assert repr(conv) == "FactorizedEdgeConv(8, 5, aggr=max)"
    before = conv.lin_centre.weight.clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.lin_centre.weight)
    x = torch.randn(10, 8, requires_grad=True)
    conv(x, knn_graph(x.detach(), 3)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(CONVS))
def test_make_conv_by_name(name):
    conv = make_conv(name, 16, 16)
    assert isinstance(conv, MessagePassing)
    x = torch.randn(12, 16)
    assert conv(x, knn_graph(x, 3)).shape == (12, 16)


def test_make_conv_class_and_errors():
    assert isinstance(make_conv(GCNConv, 4, 6), GCNConv)
    with pytest.raises(ValueError, match="unknown conv 'edgy'"):
        make_conv("edgy", 4, 4)
    with pytest.raises(TypeError, match="MessagePassing subclass"):
        make_conv(torch.nn.Linear, 4, 4)
    with pytest.raises(ValueError, match="divisible by heads"):
        make_conv("gat", 4, 6, heads=4)


def test_dense_max_path_matches_scatter_path(monkeypatch):
    # A kNN graph takes the dense fixed-degree path; shuffling its edges forces the generic
    # scatter path. Values and gradients must agree, with and without autograd.
    x = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    ei = knn_graph(x.detach(), 3)
    shuffled = ei[:, torch.randperm(ei.size(1))]
    conv = FactorizedEdgeConv(4, 5).double()
    assert conv._regular_neighbours(ei, 12) is not None and conv._regular_neighbours(shuffled, 12) is None
    out_dense, out_scatter = conv(x, ei), conv(x, shuffled)
    torch.testing.assert_close(out_dense, out_scatter)
    g_dense = torch.autograd.grad(out_dense.sum(), x)[0]
    g_scatter = torch.autograd.grad(out_scatter.sum(), x)[0]
    torch.testing.assert_close(g_dense, g_scatter)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, ei), out_dense)
        monkeypatch.setattr(conv_module, "_GATHER_BUDGET", 3 * 5)  # one node per gather: 12 chunks
        torch.testing.assert_close(conv(x, ei), out_dense)
    assert torch.autograd.gradcheck(lambda t: conv(t, ei), (x,))


@pytest.mark.parametrize("aggr", ["max", "mean", "add"])
def test_known_in_degree_gives_the_same_values_and_gradients_without_reading_back(aggr):
    from gdf_pyg.utils.profiling import count_host_syncs

    x = torch.randn(24, 6, dtype=torch.float64, requires_grad=True)
    ei = knn_graph(x.detach(), 5, nodes_per_graph=8)
    conv = FactorizedEdgeConv(6, 4, aggr=aggr).double()
    ref = conv(x, ei)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), x)
    with count_host_syncs() as count:
        out = conv(x, ei, k=5)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert count.total == 0, count.by_op
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, grad_ref)
