"""Property-based tests of graph builders and metrics on random shapes, duplicates and ties."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdf_pyg.nn.graph import fully_connected_graph, knn_graph, radius_graph
from gdf_pyg.retrieval.metrics import mean_average_precision, precision_at_k
from gdf_pyg.utils.optional import has_torch_cluster

from .retrieval.test_metrics import reference_map

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def point_sets(draw):
    sizes = draw(st.lists(st.integers(2, 12), min_size=1, max_size=4))
    dim = draw(st.integers(1, 5))
    k = draw(st.integers(1, min(sizes) - 1))
    # Small integer coordinates: many duplicate points and tied distances.
    values = draw(st.lists(st.integers(-2, 2), min_size=sum(sizes) * dim, max_size=sum(sizes) * dim))
    x = torch.tensor(values, dtype=torch.float64).view(sum(sizes), dim)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return x, batch, k


def check_knn(x, batch, k, edge_index):
    n = x.size(0)
    src, dst = edge_index
    assert torch.equal(torch.bincount(dst, minlength=n), torch.full((n,), k))
    assert bool((batch[src] == batch[dst]).all()) and not bool((src == dst).any())
    d = torch.cdist(x, x)
    for i in range(n):
        nbrs = src[dst == i]
        assert len(set(nbrs.tolist())) == k  # no repeated neighbour
        others = [j for j in range(n) if batch[j] == batch[i] and j != i and j not in set(nbrs.tolist())]
        if others:  # every neighbour is at least as close as every non-neighbour (ties either way)
            assert float(d[i, nbrs].max()) <= float(d[i, others].min()) + 1e-9
        # nearest first
        assert bool((d[i, nbrs][1:] >= d[i, nbrs][:-1] - 1e-9).all())


@SETTINGS
@given(point_sets())
def test_knn_dense_properties(data):
    x, batch, k = data
    check_knn(x, batch, k, knn_graph(x, k, batch, backend="dense"))


@pytest.mark.skipif(not has_torch_cluster(), reason="torch-cluster is not installed (scripts/setup.sh --with-cluster)")
@SETTINGS
@given(point_sets())
def test_knn_torch_cluster_properties(data):
    x, batch, k = data
    ei = knn_graph(x, k, batch, backend="torch_cluster")
    check_knn(x, batch, k, ei)
    # Same neighbour distances as the dense backend, whatever the tie-break.
    dense = knn_graph(x, k, batch, backend="dense")
    dist = lambda e: (x[e[0]] - x[e[1]]).norm(dim=1).view(-1, k)  # noqa: E731
    torch.testing.assert_close(dist(ei), dist(dense))


@SETTINGS
@given(point_sets(), st.floats(0.5, 3.0))
def test_radius_properties(data, r):
    x, batch, _ = data
    ei = radius_graph(x, r, batch, max_num_neighbors=100, backend="dense")
    d = torch.cdist(x, x)
    same = (batch[:, None] == batch[None]) & (d <= r)
    same.fill_diagonal_(False)
    assert {tuple(e) for e in ei.t().tolist()} == {(j, i) for i, j in same.nonzero().tolist()}


@SETTINGS
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5))
def test_fully_connected_properties(sizes):
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    ei = fully_connected_graph(len(batch), batch)
    assert ei.size(1) == sum(n * (n - 1) for n in sizes)
    assert bool((batch[ei[0]] == batch[ei[1]]).all())


@st.composite
def retrieval_sets(draw):
    bits = draw(st.integers(1, 8))
    nq, nd = draw(st.integers(1, 15)), draw(st.integers(1, 20))
    classes = draw(st.integers(1, 4))
    qc = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=nq * bits, max_size=nq * bits))
    dc = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=nd * bits, max_size=nd * bits))
    ql = draw(st.lists(st.integers(0, classes), min_size=nq, max_size=nq))
    dl = draw(st.lists(st.integers(0, classes - 1), min_size=nd, max_size=nd))
    return (np.array(qc).reshape(nq, bits), np.array(dc).reshape(nd, bits), np.array(ql), np.array(dl))


@SETTINGS
@given(retrieval_sets(), st.one_of(st.none(), st.integers(1, 25)))
def test_map_matches_reference(data, topk):
    qc, dc, ql, dl = data
    ours = mean_average_precision(qc, dc, ql, dl, topk=topk, ties="database_order")
    assert 0.0 <= ours <= 1.0
    assert abs(ours - reference_map(qc, dc, ql, dl, topk)) < 1e-12


@SETTINGS
@given(retrieval_sets(), st.one_of(st.none(), st.integers(1, 25)), st.integers(0, 2**31))
def test_tie_aware_metrics_do_not_depend_on_database_order(data, topk, seed):
    qc, dc, ql, dl = data
    perm = np.random.default_rng(seed).permutation(len(dc))
    ours = mean_average_precision(qc, dc, ql, dl, topk=topk)
    assert 0.0 <= ours <= 1.0 + 1e-12
    assert abs(ours - mean_average_precision(qc, dc[perm], ql, dl[perm], topk=topk)) < 1e-12
    k = topk or 5
    assert abs(precision_at_k(qc, dc, ql, dl, k) - precision_at_k(qc, dc[perm], ql, dl[perm], k)) < 1e-12


@SETTINGS
@given(retrieval_sets(), st.integers(1, 25))
def test_query_order_and_precision_bounds(data, k):
    qc, dc, ql, dl = data
    perm = np.random.default_rng(0).permutation(len(qc))
    assert abs(mean_average_precision(qc, dc, ql, dl) - mean_average_precision(qc[perm], dc, ql[perm], dl)) < 1e-12
    p = precision_at_k(qc, dc, ql, dl, k)
    assert 0.0 <= p <= 1.0
