from __future__ import annotations

import pytest
import torch

from gdf_pyg.nn.aggregation import GraphAggregation
from gdf_pyg.nn.conv import CONVS
from gdf_pyg.nn.graph import GraphBuilder


def make_batch(b=3, n=10, f=12):
    x = torch.randn(b * n, f)
    batch = torch.arange(b).repeat_interleave(n)
    pos = torch.rand(b * n, 2)
    return x, batch, pos


def permute_within_graphs(b, n):
    return torch.cat([torch.randperm(n) + g * n for g in range(b)])


@pytest.mark.parametrize("conv", sorted(CONVS))
@pytest.mark.parametrize("method", ["knn", "dynamic", "spatial_knn", "full", "radius"])
def test_equivariance_to_node_order(conv, method):
    x, batch, pos = make_batch()
    module = GraphAggregation(12, 16, num_layers=2, conv=conv, graph=GraphBuilder(method, k=3, radius=0.5)).eval()
    perm = permute_within_graphs(3, 10)
    g, h = module(x, batch, pos, num_graphs=3)
    g_p, h_p = module(x[perm], batch, pos[perm], num_graphs=3)
    assert g.shape == (3, module.out_channels) and h.shape == (30, 16)
    torch.testing.assert_close(g_p, g, atol=1e-5, rtol=1e-5)  # graph readout invariant
    torch.testing.assert_close(h_p, h[perm], atol=1e-5, rtol=1e-5)  # node features equivariant


@pytest.mark.parametrize("readout", ["mean", "max", "mean_max", "attention"])
@pytest.mark.parametrize("norm", ["batch_norm", "layer_norm", "none"])
def test_gradients_reach_every_parameter(readout, norm):
    x, batch, pos = make_batch()
    x.requires_grad_()
    module = GraphAggregation(12, 16, num_layers=3, readout=readout, norm=norm, graph=GraphBuilder("dynamic", k=4))
    g, _ = module(x, batch, pos)
    (g ** 2).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_dynamic_graph_rebuilt_per_layer(monkeypatch):
    x, batch, pos = make_batch()
    calls = []
    builder = GraphBuilder("dynamic", k=3)
    original = GraphBuilder.__call__

    def spy(self, feats, *args, **kwargs):
        calls.append(feats.size(1))
        return original(self, feats, *args, **kwargs)

    monkeypatch.setattr(GraphBuilder, "__call__", spy)
    GraphAggregation(12, 16, num_layers=3, graph=builder)(x, batch, pos)
    assert calls == [12, 16, 16]  # input features, then each layer's input
    calls.clear()
    GraphAggregation(12, 16, num_layers=3, graph=GraphBuilder("knn", k=3))(x, batch, pos)
    assert calls == [12]


def test_grid_graph_needs_grid_and_repr():
    x, batch, pos = make_batch(2, 9)
    module = GraphAggregation(12, 8, graph=GraphBuilder("grid", connectivity=4))
    g, _ = module(x, batch, pos, grid_size=(3, 3))
    assert g.shape == (2, 16)
    assert repr(module) == "GraphAggregation(12, 8, num_layers=2, conv=edge, graph=grid(k=8), readout=mean_max)"
    module.reset_parameters()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown conv"):
        GraphAggregation(4, 4, conv="nope")
    with pytest.raises(ValueError, match="unknown readout"):
        GraphAggregation(4, 4, readout="sum-ish")
    with pytest.raises(ValueError, match="num_layers"):
        GraphAggregation(4, 4, num_layers=0)
    module = GraphAggregation(4, 4, graph=GraphBuilder("knn", k=3))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        module(torch.randn(6, 5), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="k=3 needs at least 4 nodes"):
        module(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))


def test_no_edge_control_applies_the_layers_to_each_node_alone():
    # Graph method "none" keeps the layers: EdgeConv on self-loops is the node-wise map Theta_1 x_i + b.
    torch.manual_seed(0)
    agg = GraphAggregation(8, 16, num_layers=1, graph=GraphBuilder("none"), norm="none", residual=False).eval()
    x, batch = torch.randn(10, 8), torch.arange(2).repeat_interleave(5)
    _, nodes = agg(x, batch)
    conv = agg.convs[0]
    h0 = agg.act(agg.input(x))
    theta_1 = conv.lin_centre.weight + conv.lin_neighbour.weight  # the centre map holds Theta_1 - Theta_2
    assert torch.allclose(nodes, agg.act(h0 @ theta_1.t() + conv.lin_centre.bias), atol=1e-5)
    # Permuting nodes within an image permutes the output: no node sees another.
    perm = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 9, 8])
    assert torch.allclose(agg(x[perm], batch)[1], nodes[perm], atol=1e-6)


def test_pooled_mlp_control():
    from gdf_pyg.nn.aggregation import PooledMLP

    mlp = PooledMLP(8, 16, num_layers=2)
    out = mlp(torch.randn(5, 8))
    assert out.shape == (5, 16) and repr(mlp) == "PooledMLP(8, 16, num_layers=2)"
    out.sum().backward()
    assert all(p.grad is not None for p in mlp.parameters())


def test_pooled_mlp_layer_norm_is_per_image_like_the_graph_layers():
    """Both share ``make_norm``: an image's features do not depend on the rest of the batch."""
    from gdf_pyg.nn.aggregation import PooledMLP

    torch.manual_seed(0)
    mlp = PooledMLP(8, 16, num_layers=2, norm="layer_norm").eval()
    x = torch.randn(5, 8)
    torch.testing.assert_close(mlp(x)[:2], mlp(x[:2]))


@pytest.mark.parametrize("readout", ["mean", "max", "mean_max", "attention"])
@pytest.mark.parametrize("method", ["knn", "dynamic", "full", "none"])
def test_a_known_layout_gives_the_same_output_without_reading_back(readout, method):
    from gdf_pyg.utils.profiling import count_host_syncs

    x, batch, pos = make_batch()
    x = x.double().requires_grad_()
    module = GraphAggregation(12, 16, num_layers=2, readout=readout, graph=GraphBuilder(method, k=3)).double()
    g_ref, h_ref = module(x, batch, pos, num_graphs=3)
    (grad_ref,) = torch.autograd.grad(g_ref.square().sum(), x)
    with count_host_syncs() as count:
        g, h = module(x, batch, pos, nodes_per_graph=10)
        (grad,) = torch.autograd.grad(g.square().sum(), x)
    assert count.total == 0, count.by_op
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(grad, grad_ref)


def test_an_empty_batch_with_a_known_layout():
    module = GraphAggregation(12, 16, graph=GraphBuilder("dynamic", k=3)).eval()
    g, h = module(torch.empty(0, 12), torch.empty(0, dtype=torch.long), nodes_per_graph=10)
    assert g.shape == (0, module.out_channels) and h.shape == (0, 16)
