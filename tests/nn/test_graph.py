from __future__ import annotations

import math

import pytest
import torch

from gdf_pyg.utils.optional import has_faiss, has_torch_cluster
from gdf_pyg.nn.graph import (
    GRAPH_METHODS,
    GraphBuilder,
    fully_connected_graph,
    grid_graph,
    knn_graph,
    radius_graph,
    select_backend,
)

BACKENDS = [
    "dense",
    pytest.param("torch_cluster", marks=pytest.mark.skipif(not has_torch_cluster(), reason="torch-cluster is not installed")),
]
KNN_BACKENDS = [*BACKENDS, pytest.param("faiss", marks=pytest.mark.skipif(not has_faiss(), reason="faiss-cpu is not installed"))]


def random_batch(sizes, dim, dtype=torch.float64):
    x = torch.randn(sum(sizes), dim, dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return x, batch


def brute_knn(x, k, batch, loop=False, cosine=False):
    """Float64 reference: full distance matrix, per-centre sort."""
    x = x.double()
    if cosine:
        d = 1 - torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).t()
    else:
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
    d[batch[:, None] != batch[None]] = math.inf
    if not loop:
        d.fill_diagonal_(math.inf)
    nbr = d.argsort(dim=1, stable=True)[:, :k]
    centre = torch.arange(x.size(0)).unsqueeze(1).expand(-1, k)
    return torch.stack([nbr.reshape(-1), centre.reshape(-1)])


def as_sets(edge_index, n):
    out = [set() for _ in range(n)]
    for j, i in edge_index.t().tolist():
        out[i].add(j)
    return out


@pytest.mark.parametrize("backend", KNN_BACKENDS)
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("cosine", [False, True])
def test_knn_matches_brute_force(backend, loop, cosine):
    x, batch = random_batch([7, 12, 5, 9], 6)
    if backend == "faiss":  # FAISS computes in float32: compare on float32-exact inputs
        x = x.float().double()
    out = knn_graph(x, 4, batch, loop=loop, cosine=cosine, backend=backend)
    ref = brute_knn(x, 4, batch, loop=loop, cosine=cosine)
    # Same edges in the same order: grouped by centre, nearest first.
    assert torch.equal(out, ref)


@pytest.mark.parametrize("backend", KNN_BACKENDS)
def test_knn_exact_in_degree_and_layout(backend):
    x, batch = random_batch([10, 10, 10], 16, dtype=torch.float32)
    k = 5
    ei = knn_graph(x, k, batch, backend=backend)
    assert ei.shape == (2, 30 * k)
    assert torch.equal(torch.bincount(ei[1], minlength=30), torch.full((30,), k))
    assert torch.equal(batch[ei[0]], batch[ei[1]])  # never crosses images
    assert not bool((ei[0] == ei[1]).any())


@pytest.mark.parametrize("backend", KNN_BACKENDS)
def test_knn_duplicates_keep_exact_degree(backend):
    # Every point duplicated: a duplicate may tie with the centre itself.
    base = torch.randn(6, 3, dtype=torch.float64)
    x = torch.cat([base, base])
    ei = knn_graph(x, 3, backend=backend)
    assert torch.equal(torch.bincount(ei[1], minlength=12), torch.full((12,), 3))
    assert not bool((ei[0] == ei[1]).any())
    # The twin (distance 0) is always the first neighbour.
    first = ei[0].view(12, 3)[:, 0]
    assert torch.equal(first, torch.cat([torch.arange(6, 12), torch.arange(6)]))


@pytest.mark.parametrize("backend", KNN_BACKENDS[1:])
@pytest.mark.parametrize("dim", [2, 64])
def test_backends_agree_float32(backend, dim):
    x, batch = random_batch([40, 33, 50], dim, dtype=torch.float32)
    a = knn_graph(x, 8, batch, backend="dense")
    b = knn_graph(x, 8, batch, backend=backend)
    assert as_sets(a, x.size(0)) == as_sets(b, x.size(0))


def test_knn_without_batch_and_unequal_sizes_chunked(monkeypatch):
    import gdf_pyg.nn.graph as graph

    x, batch = random_batch([30, 17, 25], 5)
    ref = brute_knn(x, 3, batch)
    # Force chunking over graphs and over query rows.
    monkeypatch.setattr(graph, "DENSE_CHUNK_BYTES", 30 * 30 * 8 // 2)
    assert torch.equal(knn_graph(x, 3, batch, backend="dense"), ref)
    single = x[:30]
    assert torch.equal(knn_graph(single, 3, backend="dense"), brute_knn(single, 3, torch.zeros(30, dtype=torch.long)))


def test_knn_bad_arguments():
    x, batch = random_batch([4, 6], 3)
    with pytest.raises(ValueError, match=r"k=4 needs at least 5 nodes in every graph .* graph 0 has 4"):
        knn_graph(x, 4, batch)
    knn_graph(x, 4, batch, loop=True)  # 4 nodes suffice with self-loops
    with pytest.raises(ValueError, match="must be sorted"):
        knn_graph(x, 2, batch.flip(0))
    bad = x.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in 1 node.*node 7"):
        knn_graph(bad, 2, batch)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_graph(x, 0, batch)
    with pytest.raises(ValueError, match="unknown backend 'annoy'"):
        knn_graph(x, 2, batch, backend="annoy")
    with pytest.raises(ValueError, match="shape"):
        knn_graph(x[0], 2)
    with pytest.raises(ValueError, match="one graph id per node"):
        knn_graph(x, 2, batch[:-1])


def test_select_backend_rules():
    cpu = torch.device("cpu")
    assert select_backend(2048, 196, cpu) == "dense"
    assert select_backend(2, 4096, cpu) == ("torch_cluster" if has_torch_cluster() else "dense")
    assert select_backend(2, 4096, torch.device("cuda")) == "dense"


def brute_radius(x, r, batch, loop=False):
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    d[batch[:, None] != batch[None]] = math.inf
    if not loop:
        d.fill_diagonal_(math.inf)
    edges = []
    for i in range(x.size(0)):
        order = d[i].argsort(stable=True)
        edges += [(int(j), i) for j in order if d[i, j] <= r * r]
    return torch.tensor(edges, dtype=torch.long).t()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loop", [False, True])
def test_radius_matches_brute_force(backend, loop):
    x, batch = random_batch([9, 14, 6], 2)
    out = radius_graph(x, 0.9, batch, loop=loop, max_num_neighbors=100, backend=backend)
    assert torch.equal(out, brute_radius(x, 0.9, batch, loop))


def test_radius_cap_keeps_nearest():
    x, batch = random_batch([20], 2)
    out = radius_graph(x, 10.0, batch, max_num_neighbors=3, backend="dense")
    assert torch.equal(out, brute_knn(x, 3, batch))
    with pytest.raises(ValueError, match="r must be a positive"):
        radius_graph(x, 0.0, batch)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_grid_graph_matches_brute_force(connectivity):
    h, w, b = 3, 4, 2
    ei = grid_graph(h, w, connectivity=connectivity, batch_size=b)
    pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2).repeat(b, 1)
    img = torch.arange(b).repeat_interleave(h * w)
    diff = (pos[:, None] - pos[None]).abs()
    if connectivity == 4:
        adj = diff.sum(-1) == 1
    else:
        adj = (diff.max(-1).values == 1)
    adj &= img[:, None] == img[None]
    ref = {(int(j), int(i)) for i, j in adj.nonzero().tolist()}
    assert set(map(tuple, ei.t().tolist())) == ref
    assert ei.size(1) == len(ref)
    assert bool((ei[1][1:] >= ei[1][:-1]).all())  # grouped by centre


def test_fully_connected_graph():
    batch = torch.tensor([0, 0, 0, 1, 1, 3, 3, 3, 3])
    ei = fully_connected_graph(9, batch)
    same = batch[:, None] == batch[None]
    same.fill_diagonal_(False)
    assert set(map(tuple, ei.t().tolist())) == {(int(j), int(i)) for i, j in same.nonzero().tolist()}
    assert fully_connected_graph(9, batch, loop=True).size(1) == 9 + 4 + 16
    assert fully_connected_graph(4).size(1) == 12


def test_graph_builder_dispatch():
    x, batch = random_batch([9, 9], 4)
    pos = torch.rand(18, 2, dtype=torch.float64)
    assert torch.equal(GraphBuilder("knn", k=3)(x, batch), brute_knn(x, 3, batch))
    assert torch.equal(GraphBuilder("spatial_knn", k=3)(x, batch, pos), brute_knn(pos, 3, batch))
    loops = GraphBuilder("none")(x, batch)
    assert torch.equal(loops, torch.arange(x.size(0)).repeat(2, 1))  # each node its own only neighbour
    assert GraphBuilder("grid", connectivity=4)(x, batch, pos, (3, 3)).size(1) == 2 * 24
    assert GraphBuilder("full")(x, batch).size(1) == 2 * 72
    assert GraphBuilder("dynamic").is_dynamic and not GraphBuilder("knn").is_dynamic
    with pytest.raises(ValueError, match="needs node positions"):
        GraphBuilder("radius")(x, batch)
    with pytest.raises(ValueError, match="spatial nodes"):
        GraphBuilder("grid")(x, batch, pos)
    with pytest.raises(ValueError, match=r"graph.method: 'knm' is not allowed; expected one of \["):
        GraphBuilder("knm")
    with pytest.raises(ValueError, match="graph.k: must be >= 1, got 0"):
        GraphBuilder("knn", k=0)
    with pytest.raises(ValueError, match="'faiss' does kNN only"):
        GraphBuilder("radius", backend="faiss")
    assert set(GRAPH_METHODS) == {"none", "knn", "dynamic", "spatial_knn", "grid", "radius", "full"}


# ---- precision: graphs do not depend on autocast or the input's precision -------------------
def offset_features(graphs=4, nodes=196, dim=1024, offset=10.0):
    """Features sharing a large offset, as backbone features do: cancellation-prone scores."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(graphs * nodes, dim, generator=g) + offset * torch.randn(1, dim, generator=g)
    return x, torch.arange(graphs).repeat_interleave(nodes)


@pytest.mark.parametrize("backend", ["dense", "auto"])
@pytest.mark.parametrize("cosine", [False, True])
def test_knn_under_bf16_autocast_equals_float32_graph(backend, cosine):
    x, batch = offset_features()
    ref = knn_graph(x, 8, batch, cosine=cosine, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = knn_graph(x, 8, batch, cosine=cosine, backend=backend)
    assert torch.equal(amp, ref)
    # Half-precision features are promoted, not scored in half precision.
    assert torch.equal(knn_graph(x.bfloat16(), 8, batch, cosine=cosine, backend=backend),
                       knn_graph(x.bfloat16().float(), 8, batch, cosine=cosine, backend=backend))


def test_float32_knn_with_a_shared_offset_equals_float64_graph():
    x, batch = offset_features()
    assert torch.equal(knn_graph(x, 8, batch), knn_graph(x.double(), 8, batch))


@pytest.mark.parametrize("method", ["knn", "dynamic", "spatial_knn", "radius", "full", "grid"])
@pytest.mark.parametrize("backend", KNN_BACKENDS)
def test_every_builder_is_independent_of_autocast(method, backend):
    if method == "radius" and backend == "faiss":
        pytest.skip("faiss does kNN only")
    x, batch = offset_features(graphs=2, nodes=49, dim=64)
    pos = torch.rand(49, 2).repeat(2, 1)
    build = GraphBuilder(method, k=4, backend=backend)
    ref = build(x, batch, pos, (7, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(build(x, batch, pos, (7, 7)), ref)


def test_graph_construction_keeps_no_autograd_history():
    x, batch = offset_features(graphs=2, nodes=49, dim=64)
    x.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            edges = knn_graph(x * 2.0, 8, batch)
            radius_graph(x, 20.0, batch)
    assert saved == []  # nothing kept for a backward pass (x * 2.0 saves nothing itself)
    assert edges.grad_fn is None and not edges.requires_grad


# ---- a known layout: sizes from nodes_per_graph, nothing read back from the device -----------
@pytest.mark.parametrize("backend", KNN_BACKENDS)
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("cosine", [False, True])
def test_knn_with_nodes_per_graph_equals_knn_with_batch(backend, loop, cosine):
    x, batch = random_batch([9, 9, 9, 9], 6)
    if backend == "faiss":
        x = x.float().double()
    ref = brute_knn(x, 4, batch, loop=loop, cosine=cosine)
    assert torch.equal(knn_graph(x, 4, nodes_per_graph=9, loop=loop, cosine=cosine, backend=backend), ref)
    assert torch.equal(knn_graph(x, 4, batch, loop=loop, cosine=cosine, backend=backend), ref)


def test_nodes_per_graph_errors():
    x, _ = random_batch([5, 5], 3)
    with pytest.raises(ValueError, match="nodes_per_graph=3 does not divide the 10 nodes"):
        knn_graph(x, 2, nodes_per_graph=3)
    with pytest.raises(ValueError, match="k=5 needs at least 6 nodes in every graph"):
        knn_graph(x, 5, nodes_per_graph=5)
    with pytest.raises(ValueError, match="nodes_per_graph must be a positive integer, got 0"):
        knn_graph(x, 2, nodes_per_graph=0)


@pytest.mark.parametrize("method", ["knn", "dynamic", "spatial_knn", "full", "none", "grid"])
def test_builder_with_a_known_layout_reads_nothing_back(method):
    from gdf_pyg.utils.profiling import count_host_syncs

    x, batch = offset_features(graphs=3, nodes=16, dim=32)
    pos = torch.rand(16, 2).repeat(3, 1)
    build = GraphBuilder(method, k=4)
    ref = build(x, batch, pos, (4, 4))
    with count_host_syncs() as count:
        edges = build(x, batch, pos, (4, 4), nodes_per_graph=16)
    assert count.total == 0, count.by_op
    assert torch.equal(edges, ref)
    degree = build.regular_degree(16)
    if degree is not None:  # grouped by centre, every node the same in-degree
        assert torch.equal(edges[1], torch.arange(48).repeat_interleave(degree))


def test_fully_connected_with_a_layout_and_mixed_sizes():
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    ei = fully_connected_graph(8, batch)
    same = batch[:, None] == batch[None]
    same.fill_diagonal_(False)
    assert set(map(tuple, ei.t().tolist())) == {(int(j), int(i)) for i, j in same.nonzero().tolist()}
    assert bool((ei[1][1:] >= ei[1][:-1]).all())  # grouped by centre
    uniform = fully_connected_graph(9, nodes_per_graph=3, loop=True)
    assert torch.equal(uniform, fully_connected_graph(9, torch.arange(3).repeat_interleave(3), loop=True))
    assert uniform.size(1) == 27


def test_dense_knn_chunks_features_of_large_graphs(monkeypatch):
    import gdf_pyg.nn.graph as graph

    x, batch = offset_features(graphs=5, nodes=30, dim=16)
    ref = knn_graph(x.double(), 5, batch)
    monkeypatch.setattr(graph, "FEATURE_CHUNK_BYTES", 30 * 16 * 4 * 2)  # two graphs per chunk
    assert torch.equal(knn_graph(x, 5, batch), ref)
    assert torch.equal(knn_graph(x, 5, nodes_per_graph=30), ref)


def test_dense_knn_over_many_positions_equals_the_float64_graph():
    # Thousands of 2-D points: neighbours closer together than float32 resolves in the expanded
    # score |c_i|^2 - d^2, re-ranked from the coordinates' differences.
    g = torch.Generator().manual_seed(4096 * 1000 + 82)
    x = torch.randn(2 * 2048, 2, generator=g)
    batch = torch.arange(2).repeat_interleave(2048)
    assert torch.equal(knn_graph(x, 8, batch, backend="dense"), brute_knn(x, 8, batch))
    assert torch.equal(knn_graph(x, 8, nodes_per_graph=2048, backend="dense"), brute_knn(x, 8, batch))
