r"""Graph constructions over region nodes.

Every builder returns ``edge_index`` of shape :math:`(2, |\mathcal{E}|)` in PyG's
``source_to_target`` layout: ``edge_index[0]`` is the neighbour :math:`j` (message source)
and ``edge_index[1]`` the centre :math:`i` (the node that receives). Edges are grouped by
centre in node order and, for the distance-based graphs, sorted by increasing distance
within each centre, so results are deterministic and comparable across backends.

Nodes of several images are stacked as in PyG mini-batches: ``x`` is :math:`(N, F)` and
``batch`` :math:`(N,)` assigns each node to its image; it must be sorted. Edges never
cross images.

Backends for the nearest-neighbour searches:

- ``"dense"``: our batched pure-PyTorch implementation, always available. One batched
  matrix product per chunk of images, then ``topk``; memory is bounded by chunking.
- ``"torch_cluster"``: the ``torch-cluster`` extension (a KD-tree on CPU, brute force on
  CUDA), used when it is installed. Cosine distance is computed on unit-normalised inputs,
  which ranks neighbours exactly as the cosine distance does and also works on CPU (where
  ``torch-cluster`` refuses ``cosine=True``).
- ``"faiss"``: FAISS's exact brute-force search (``faiss.knn``), one call per graph, when
  ``faiss-cpu`` is installed (kNN only).
- ``"auto"``: see :func:`select_backend`.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import asdict, dataclass
import itertools
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import to_dense_batch

from ..utils.checks import check_positive_finite, check_positive_int, choice, require
from ..utils.optional import has_faiss, has_torch_cluster

log = logging.getLogger(__name__)

__all__ = [
    "GRAPH_METHODS",
    "GraphBuilder",
    "GraphConfig",
    "fully_connected_graph",
    "grid_graph",
    "knn_graph",
    "radius_graph",
    "select_backend",
]

KNN_BACKENDS = ("auto", "dense", "torch_cluster", "faiss")

# Scores matrices above this many bytes are computed in chunks by the dense backend.
DENSE_CHUNK_BYTES = 256 * 2**20


@contextlib.contextmanager
def _exact(device: torch.device) -> Iterator[None]:
    """No autograd history and no autocast: a graph is a discrete choice that must not depend
    on the precision a caller trains in (bf16 scores reorder neighbours)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if torch.amp.is_autocast_available(device.type):
            stack.enter_context(torch.autocast(device.type, enabled=False))
        yield


def _full_precision(builder: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Runs a builder on detached features of at least float32, outside autocast."""

    @functools.wraps(builder)
    def wrapper(x: Tensor, *args, **kwargs) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        with _exact(x.device):
            return builder(x.detach(), *args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------
# Input checks of the public builders (the API edge). The builders a model calls in every forward
# pass (GraphBuilder with a known layout) check shapes only: a value check reads the tensor back
# to the host, which on a GPU stalls the queue of launched work.
# --------------------------------------------------------------------------------------
def _check_features(x: Tensor, name: str = "x") -> None:
    """Type, rank and dtype of node features (host-side only: nothing is read from the device)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (num_nodes, num_features), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _raise_nonfinite(x: Tensor, name: str = "x") -> None:
    """Names what is wrong with features whose distances came out non-finite."""
    finite = torch.isfinite(x).all(dim=1)
    if bool(finite.all()):
        raise ValueError(f"{name} has entries too large for {x.dtype}: squared distances overflow")
    bad = (~finite).nonzero().flatten()
    raise ValueError(
        f"{name} contains NaN or inf in {bad.numel()} node(s), first at node {int(bad[0])}: "
        "graph construction needs finite features"
    )


def _check_finite(x: Tensor, name: str = "x") -> None:
    """Raises on NaN or inf features, or features whose squared norms overflow (one reduction)."""
    if x.numel() and not bool(torch.isfinite(torch.linalg.vector_norm(x, dim=1)).all()):
        _raise_nonfinite(x, name)


def _graph_sizes(batch: Optional[Tensor], num_nodes: int, nodes_per_graph: Optional[int] = None) -> List[int]:
    """Nodes per graph, on the host.

    From ``nodes_per_graph`` (every graph that many nodes, stacked in order) nothing is read
    from the device; from ``batch`` (checked to be a sorted vector of graph ids) the counts are.
    """
    if nodes_per_graph is not None:
        check_positive_int(nodes_per_graph, "nodes_per_graph")
        if num_nodes % nodes_per_graph:
            raise ValueError(f"nodes_per_graph={nodes_per_graph} does not divide the {num_nodes} nodes")
        return [nodes_per_graph] * (num_nodes // nodes_per_graph)
    if batch is None:
        return [num_nodes]
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.numel() != num_nodes:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"batch must be a 1-D tensor with one graph id per node ({num_nodes}), got {shape}")
    if batch.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"batch must hold integer graph ids, got {batch.dtype}")
    if num_nodes == 0:
        return []
    if int(batch.min()) < 0:
        raise ValueError(f"batch holds a negative graph id ({int(batch.min())})")
    step = batch[1:] - batch[:-1]
    if bool((step < 0).any()):
        pos = int((step < 0).nonzero()[0]) + 1
        raise ValueError(
            f"batch must be sorted (nodes of each graph contiguous, graphs in increasing order); "
            f"it decreases at node {pos}: {int(batch[pos - 1])} -> {int(batch[pos])}"
        )
    return torch.bincount(batch.long()).tolist()


def _check_k(k: int, sizes: List[int], loop: bool) -> None:
    check_positive_int(k, "k")
    nonempty = [n for n in sizes if n > 0]
    if not nonempty:
        return
    smallest = min(nonempty)
    if k > (smallest if loop else smallest - 1):
        graph = next(g for g, n in enumerate(sizes) if n == smallest)
        need = k if loop else k + 1
        raise ValueError(
            f"k={k} needs at least {need} nodes in every graph (loop={loop}), "
            f"but graph {graph} has {smallest}"
        )


def _check_backend(backend: str) -> None:
    if backend not in KNN_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {KNN_BACKENDS}")
    if backend == "torch_cluster" and not has_torch_cluster():
        raise ImportError(
            "backend='torch_cluster' needs the torch-cluster package "
            "(in a clone of gdf-pyg: scripts/setup.sh --with-cluster, which compiles it once; elsewhere: "
            "pip install torch-cluster --no-build-isolation); backend='dense' needs nothing"
        )
    if backend == "faiss" and not has_faiss():
        raise ImportError("backend='faiss' needs faiss-cpu (pip install faiss-cpu); backend='dense' needs nothing")


def select_backend(num_features: int, max_nodes: int, device: torch.device) -> str:
    r"""The backend ``"auto"`` resolves to.

    ``torch-cluster`` answers with a KD-tree on CPU, which only beats a batched matrix
    product in few dimensions with many nodes per graph (image positions of large feature
    maps). In feature space (tens to thousands of dimensions) and on GPUs the dense
    backend is faster at every size measured by ``benchmarks/graph_construction.py``.
    """
    if device.type == "cpu" and num_features <= 3 and max_nodes >= 1024 and has_torch_cluster():
        return "torch_cluster"
    return "dense"


def _batch_vector(sizes: List[int], device: torch.device) -> Tensor:
    """The sorted graph id of every node, from the graphs' sizes (no device read)."""
    if len(set(sizes)) <= 1:
        n = sizes[0] if sizes else 0
        return torch.arange(len(sizes), device=device).repeat_interleave(n)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))


# --------------------------------------------------------------------------------------
# Dense backend.
# --------------------------------------------------------------------------------------
# Centred features of the graphs scored together: under glibc's mmap threshold (32 MB), so the
# copy of each chunk reuses freed heap memory instead of mapping and zero-filling fresh pages,
# which for a batch of large maps costs as much as half the matrix product itself.
FEATURE_CHUNK_BYTES = 4 * 2**20


def _centre(xb: Tensor, counts: Optional[Tensor], cosine: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Unit rows (cosine), or each graph shifted to zero mean, and the ``(b, n)`` validity of
    padded rows (``None`` for graphs of equal size); padding rows come out zero."""
    valid = None
    if counts is not None:
        valid = torch.arange(xb.size(1), device=xb.device) < counts.unsqueeze(1)
    if cosine:
        return xb / torch.linalg.vector_norm(xb, dim=-1, keepdim=True).clamp_min(1e-12), valid
    # Distances do not change when a graph is shifted; centring keeps the expanded score
    # 2 x_i.x_j - |x_j|^2 from cancelling when features share a large offset.
    if valid is None:
        return xb - xb.mean(1, keepdim=True), None
    mean = xb.sum(1, keepdim=True) / counts.view(-1, 1, 1).clamp_min(1)  # padding rows are zero
    return (xb - mean) * valid.unsqueeze(-1), valid


def _dense_neighbours(xb: Tensor, counts: Optional[Tensor], m: int, loop: bool, cosine: bool
                      ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The ``m`` best-scoring neighbours of every node of the graphs ``xb`` :math:`(B, n, F)`.

    Scores, larger = closer: :math:`s_{ij} = 2\,\mathbf{c}_i^\top \mathbf{c}_j - \lVert \mathbf{c}_j
    \rVert^2 = \lVert \mathbf{c}_i \rVert^2 - d_{ij}^2` on the centred features
    :math:`\mathbf{c}` (Euclidean; the row constant does not change the ranking), or
    :math:`\mathbf{c}_i^\top \mathbf{c}_j` on unit rows (cosine). One ``bmm`` per chunk of graphs
    gives the Gram matrix, whose diagonal holds the squared norms. ``counts`` :math:`(B,)` are the
    graphs' sizes when ``xb`` is padded (``None``: every graph has ``n`` nodes).

    Returns:
        scores and local neighbour ids :math:`(B, n, m)` (best first; ``-inf`` where a graph ran
        out of nodes), and :math:`\lVert \mathbf{c}_i \rVert^2` :math:`(B, n)`, which is finite
        exactly when the features are and their squares do not overflow.
    """
    num_graphs, n, f = xb.shape
    size = xb.element_size()
    rows = n if n * n * size <= DENSE_CHUNK_BYTES else max(1, DENSE_CHUNK_BYTES // (n * size))
    graphs = max(1, min(FEATURE_CHUNK_BYTES // max(n * f * size, 1), DENSE_CHUNK_BYTES // max(rows * n * size, 1)))
    values, index, squares = [], [], []
    for g0 in range(0, num_graphs, graphs):
        c, valid = _centre(xb[g0:g0 + graphs], None if counts is None else counts[g0:g0 + graphs], cosine)
        gram = torch.bmm(c, c.transpose(1, 2)) if rows == n else None
        sq = gram.diagonal(dim1=1, dim2=2).clone() if gram is not None else c.square().sum(-1)
        vals_g, idx_g = [], []
        for r0 in range(0, n, rows):
            scores = gram if gram is not None else torch.bmm(c[:, r0:r0 + rows], c.transpose(1, 2))
            if not cosine:
                scores = scores.mul_(2.0).sub_(sq.unsqueeze(1))
            if valid is not None:
                scores.masked_fill_(~valid.unsqueeze(1), -math.inf)
            if not loop:
                scores.diagonal(offset=r0, dim1=1, dim2=2).fill_(-math.inf)
            v, i = torch.topk(scores, m, dim=-1)
            vals_g.append(v)
            idx_g.append(i)
        values.append(torch.cat(vals_g, dim=1) if len(vals_g) > 1 else vals_g[0])
        index.append(torch.cat(idx_g, dim=1) if len(idx_g) > 1 else idx_g[0])
        squares.append(sq)
    if len(values) == 1:
        return values[0], index[0], squares[0]
    return torch.cat(values), torch.cat(index), torch.cat(squares)


def _padded(x: Tensor, sizes: List[int]) -> Tuple[Tensor, Optional[Tensor]]:
    """``(B, n_max, F)`` graphs of ``x`` and their sizes on the device (``None`` when all are
    equal: then a view, no copy)."""
    n_max = max(sizes)
    if all(n == n_max for n in sizes):
        return x.view(len(sizes), n_max, x.size(1)), None
    batch = _batch_vector(sizes, x.device)
    padded, _ = to_dense_batch(x, batch, batch_size=len(sizes), max_num_nodes=n_max)
    return padded, torch.tensor(sizes, device=x.device)


def _real_rows(sizes: List[int], counts: Optional[Tensor], device: torch.device) -> Tuple[Tensor, Optional[Tensor]]:
    """Global id of each padded row ``(B, n_max)``, and which rows are real nodes (``None``: all)."""
    n_max = max(sizes)
    ptr = torch.tensor([0, *itertools.accumulate(sizes)][:-1], device=device) if counts is not None else (
        torch.arange(len(sizes), device=device) * n_max)
    local = torch.arange(n_max, device=device)
    return ptr.unsqueeze(1) + local, None if counts is None else local.unsqueeze(0) < counts.unsqueeze(1)


# In this few dimensions (image positions) many nodes lie closer together than float32 can tell
# apart in the expanded score |c_i|^2 - d_ij^2: a few more candidates are re-ranked by their
# distances computed directly from the differences (cheap here: a handful of coordinates each).
EXACT_RERANK_DIMS = 8
RERANK_EXTRA = 2


def _rerank(xb: Tensor, scores: Tensor, local_nbr: Tensor, k: int) -> Tensor:
    """The ``k`` nearest of each node's candidates by distances from the differences."""
    b, n, m = local_nbr.shape
    candidates = torch.gather(xb, 1, local_nbr.reshape(b, n * m, 1).expand(-1, -1, xb.size(-1))).view(b, n, m, -1)
    d2 = (candidates - xb.unsqueeze(2)).square().sum(-1).masked_fill_(~torch.isfinite(scores), math.inf)
    return local_nbr.gather(-1, d2.argsort(dim=-1, stable=True)[..., :k])


def _dense_knn(x: Tensor, k: int, sizes: List[int], loop: bool, cosine: bool, check_finite: bool) -> Tensor:
    # Our own: PyG's knn_graph now needs pyg-lib (not on PyPI), and in feature space one batched
    # matrix product + topk beats torch-cluster's KD-tree 30x (benchmarks/graph_construction.py).
    xb, counts = _padded(x, sizes)
    rerank = not cosine and x.size(1) <= EXACT_RERANK_DIMS
    m = min(k + RERANK_EXTRA, max(sizes) - (0 if loop else 1)) if rerank else k
    scores, local_nbr, sq = _dense_neighbours(xb, counts, m, loop, cosine)
    if check_finite and not bool(torch.isfinite(sq).all()):
        _raise_nonfinite(x)
    if m > k:
        local_nbr = _rerank(xb, scores, local_nbr, k)
    centre, valid = _real_rows(sizes, counts, x.device)
    source = local_nbr + centre[:, :1].unsqueeze(-1)  # local ids + the graph's first id
    if valid is None:  # graphs of equal size: every shape is known, nothing is read back
        target = centre.unsqueeze(-1).expand(-1, -1, k)
        return torch.stack([source.reshape(-1), target.reshape(-1)], dim=0)
    source = source[valid]  # (N, k)
    target = centre[valid].unsqueeze(1).expand(-1, k)
    return torch.stack([source.reshape(-1), target.reshape(-1)], dim=0)


# --------------------------------------------------------------------------------------
# torch-cluster backend.
# --------------------------------------------------------------------------------------
def _sort_by_centre_then_distance(x: Tensor, source: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    dist = (x[source] - x[target]).pow(2).sum(-1)
    order = torch.argsort(dist, stable=True)
    order = order[torch.argsort(target[order], stable=True)]
    return source[order], target[order]


def _drop_self(nbr: Tensor, centre: Tensor, k: int, loop: bool) -> Tensor:
    """``edge_index`` from ``(N, k or k+1)`` neighbour lists sorted nearest first.

    Without loops the centre itself is dropped; if an exact duplicate pushed it out of the
    ``k + 1`` found, the farthest is dropped instead, so every node keeps exactly ``k``.
    """
    if not loop:
        is_self = nbr == centre
        drop = torch.where(is_self.any(1), is_self.float().argmax(1), torch.full_like(nbr[:, 0], k))
        keep = torch.ones_like(nbr, dtype=torch.bool)
        keep[torch.arange(nbr.size(0), device=nbr.device), drop] = False
        nbr, centre = nbr[keep].view(-1, k), centre[keep].view(-1, k)
    return torch.stack([nbr.reshape(-1), centre.reshape(-1)], dim=0)


def _torch_cluster_knn(x: Tensor, k: int, sizes: List[int], batch: Optional[Tensor], loop: bool,
                       cosine: bool) -> Tensor:
    import torch_cluster

    if cosine:
        x = F.normalize(x, dim=-1)
    if batch is None and len(sizes) > 1:
        batch = _batch_vector(sizes, x.device)
    want = k if loop else k + 1
    num_workers = torch.get_num_threads() if batch is None else 1
    centre, nbr = torch_cluster.knn(x, x, want, batch, batch, num_workers=num_workers)
    nbr, centre = _sort_by_centre_then_distance(x, nbr, centre)
    return _drop_self(nbr.view(-1, want), centre.view(-1, want), k, loop)


def _faiss_knn(x: Tensor, k: int, sizes: List[int], loop: bool, cosine: bool) -> Tensor:
    """Exact brute-force search of FAISS, one call per graph (CPU, float32)."""
    import faiss

    if cosine:
        x = F.normalize(x, dim=-1)
    want = k if loop else k + 1
    feats = x.detach().to("cpu", torch.float32).contiguous().numpy()
    nbrs, start = [], 0
    for n in sizes:
        if n:
            block = feats[start:start + n]
            _, idx = faiss.knn(block, block, want)
            nbrs.append(torch.from_numpy(idx).to(torch.long) + start)
        start += n
    nbr = torch.cat(nbrs).view(-1).to(x.device)
    centre = torch.arange(x.size(0), device=x.device).repeat_interleave(want)
    nbr, centre = _sort_by_centre_then_distance(x, nbr, centre)
    return _drop_self(nbr.view(-1, want), centre.view(-1, want), k, loop)


def _knn(x: Tensor, k: int, sizes: List[int], batch: Optional[Tensor], loop: bool, cosine: bool, backend: str,
         check_finite: bool) -> Tensor:
    """The kNN graph of graphs of ``sizes`` nodes (checked against ``k`` already)."""
    if x.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    if backend == "auto":
        backend = select_backend(x.size(1), max(sizes), x.device)
    if backend == "dense":
        return _dense_knn(x, k, sizes, loop, cosine, check_finite)
    if check_finite:
        _check_finite(x)
    if backend == "torch_cluster":
        return _torch_cluster_knn(x, k, sizes, batch, loop, cosine)
    return _faiss_knn(x, k, sizes, loop, cosine)


# --------------------------------------------------------------------------------------
# Public builders.
# --------------------------------------------------------------------------------------
@_full_precision
def knn_graph(
    x: Tensor,
    k: int,
    batch: Optional[Tensor] = None,
    *,
    loop: bool = False,
    cosine: bool = False,
    backend: str = "auto",
    nodes_per_graph: Optional[int] = None,
) -> Tensor:
    r"""The :math:`k`-nearest-neighbour graph of the rows of ``x`` within each graph.

    .. math::
        \mathcal{E} = \{(j, i) : j \in \mathcal{N}_k(i)\},\qquad
        \mathcal{N}_k(i) = \operatorname*{arg\,min}_{S \subseteq \mathcal{V}_{b(i)},\,|S|=k}
        \sum_{j \in S} d(\mathbf{x}_i, \mathbf{x}_j)

    with :math:`d` the Euclidean distance, or :math:`1 - \cos(\mathbf{x}_i, \mathbf{x}_j)`
    when ``cosine=True``; :math:`i` itself is excluded unless ``loop=True``.

    Args:
        x (Tensor): node features or positions :math:`(N, F)`, finite.
        k (int): neighbours per node; every node receives exactly :math:`k` edges.
        batch (Tensor, optional): sorted graph id of each node :math:`(N,)`.
            (default: :obj:`None`, one graph)
        loop (bool): whether a node may be its own neighbour. (default: :obj:`False`)
        cosine (bool): rank by cosine distance. (default: :obj:`False`)
        backend (str): ``"auto"``, ``"dense"``, ``"torch_cluster"`` or ``"faiss"`` (exact
            brute force, one call per graph, float32 on CPU). (default: ``"auto"``)
        nodes_per_graph (int, optional): every graph has exactly this many nodes, stacked in
            order (regions of images of one size); the graphs' sizes are then known without
            reading ``batch``, which may be left out. (default: :obj:`None`)

    Returns:
        ``edge_index`` :math:`(2, N k)`, ``[neighbour, centre]``, grouped by centre in
        node order and sorted by increasing distance within each centre. The graph is
        computed without autograd history, outside autocast and in at least float32
        (half-precision inputs are promoted), so it is the same whatever precision the
        caller trains in.

    Raises:
        ValueError: on non-finite features, an unsorted ``batch``, or a graph with too few
            nodes for ``k`` (``k`` must be below the node count when ``loop=False``).
    """
    _check_features(x)
    _check_backend(backend)
    sizes = _graph_sizes(batch, x.size(0), nodes_per_graph)
    _check_k(k, sizes, loop)
    return _knn(x, k, sizes, batch, loop, cosine, backend, check_finite=True)


@_full_precision
def radius_graph(
    x: Tensor,
    r: float,
    batch: Optional[Tensor] = None,
    *,
    loop: bool = False,
    max_num_neighbors: int = 32,
    backend: str = "auto",
    nodes_per_graph: Optional[int] = None,
) -> Tensor:
    r"""Connects each node to the nodes of its graph within Euclidean distance ``r``.

    .. math::
        \mathcal{E} = \{(j, i) : b(j) = b(i),\ \lVert \mathbf{x}_i - \mathbf{x}_j \rVert_2 \le r\}

    keeping, per centre, the ``max_num_neighbors`` nearest when more qualify (the
    ``torch_cluster`` backend keeps an arbitrary subset instead, as ``torch-cluster`` does;
    both agree whenever no node has more than ``max_num_neighbors`` neighbours in range).
    The number of edges depends on the data, so this builder reads it back from the device.

    Args:
        x (Tensor): node positions or features :math:`(N, F)`, finite.
        r (float): radius, > 0.
        batch (Tensor, optional): sorted graph id of each node :math:`(N,)`.
        loop (bool): whether to include self-loops. (default: :obj:`False`)
        max_num_neighbors (int): cap on incoming edges per node. (default: :obj:`32`)
        backend (str): ``"auto"``, ``"dense"`` or ``"torch_cluster"``.
        nodes_per_graph (int, optional): as in :func:`knn_graph`.

    Returns:
        ``edge_index`` :math:`(2, |\mathcal{E}|)`, grouped by centre, nearest first.
    """
    _check_features(x)
    if backend == "faiss":
        raise ValueError("radius_graph supports backends 'auto', 'dense' and 'torch_cluster', not 'faiss'")
    check_positive_finite(r, "r")
    check_positive_int(max_num_neighbors, "max_num_neighbors")
    _check_backend(backend)
    sizes = _graph_sizes(batch, x.size(0), nodes_per_graph)
    return _radius(x, float(r), sizes, batch, loop, max_num_neighbors, backend, check_finite=True)


def _radius(x: Tensor, r: float, sizes: List[int], batch: Optional[Tensor], loop: bool, max_num_neighbors: int,
            backend: str, check_finite: bool) -> Tensor:
    if x.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    if check_finite:
        _check_finite(x)
    if backend == "auto":
        backend = select_backend(x.size(1), max(sizes), x.device)
    if backend == "torch_cluster":
        if batch is None and len(sizes) > 1:
            batch = _batch_vector(sizes, x.device)
        return _torch_cluster_radius(x, r, batch, loop, max_num_neighbors)
    return _dense_radius(x, r, sizes, loop, max_num_neighbors)


def _torch_cluster_radius(x: Tensor, r: float, batch: Optional[Tensor], loop: bool, max_num_neighbors: int) -> Tensor:
    import torch_cluster

    want = max_num_neighbors if loop else max_num_neighbors + 1
    centre, nbr = torch_cluster.radius(x, x, r, batch, batch, max_num_neighbors=want)
    keep = (nbr != centre) if not loop else torch.ones_like(nbr, dtype=torch.bool)
    nbr, centre = _sort_by_centre_then_distance(x, nbr[keep], centre[keep])
    # Enforce the cap after dropping self-loops, as the dense backend does.
    first = torch.searchsorted(centre, centre, right=False)
    rank = torch.arange(centre.numel(), device=x.device) - first
    keep = rank < max_num_neighbors
    return torch.stack([nbr[keep], centre[keep]], dim=0)


def _dense_radius(x: Tensor, r: float, sizes: List[int], loop: bool, max_num_neighbors: int) -> Tensor:
    m = min(max_num_neighbors, max(sizes))
    xb, counts = _padded(x, sizes)
    scores, local_nbr, _ = _dense_neighbours(xb, counts, m, loop, False)
    centre, valid = _real_rows(sizes, counts, x.device)
    if valid is None:
        valid = torch.ones_like(centre, dtype=torch.bool)
    source = local_nbr + centre[:, :1].unsqueeze(-1)
    real = torch.isfinite(scores[valid])  # (N, m): False where topk ran out of nodes
    source = source[valid][real]
    target = centre[valid].unsqueeze(1).expand(-1, m)[real]
    # Decide membership from exact differences, not from the expanded score (cancellation).
    in_range = (x[source] - x[target]).pow(2).sum(-1) <= r * r
    return torch.stack([source[in_range], target[in_range]], dim=0)


def grid_graph(
    height: int,
    width: int,
    *,
    connectivity: int = 8,
    batch_size: int = 1,
    loop: bool = False,
    device: Optional[torch.device] = None,
) -> Tensor:
    r"""The 4- or 8-neighbour lattice of an ``height x width`` feature map, per image.

    Node :math:`(y, x)` of image :math:`b` has id :math:`b\,HW + yW + x` (row-major, the
    order of ``feature_map.flatten(2)``). Edges go both ways; border nodes have fewer
    neighbours.

    Returns:
        ``edge_index`` :math:`(2, |\mathcal{E}|)`, grouped by centre.
    """
    for name, value in (("height", height), ("width", width), ("batch_size", batch_size)):
        check_positive_int(value, name)
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    offsets = [(-1, 0), (0, -1), (0, 1), (1, 0)]
    if connectivity == 8:
        offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    if loop:
        offsets = sorted(offsets + [(0, 0)])
    # Built on the host (the lattice depends on the sizes alone) and copied over in one go.
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ys, xs = ys.reshape(-1, 1), xs.reshape(-1, 1)
    ny, nx = ys + np.array([o[0] for o in offsets]), xs + np.array([o[1] for o in offsets])  # (HW, len(offsets))
    valid = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
    centre = np.broadcast_to(ys * width + xs, ny.shape)[valid]
    source = (ny * width + nx)[valid]
    shift = (np.arange(batch_size) * height * width).reshape(-1, 1)
    edges = np.stack([(source + shift).reshape(-1), (centre + shift).reshape(-1)])
    return torch.from_numpy(edges.astype(np.int64)).to(device or "cpu", non_blocking=True)


def fully_connected_graph(num_nodes: int, batch: Optional[Tensor] = None, *, loop: bool = False,
                          nodes_per_graph: Optional[int] = None, device: Optional[torch.device] = None) -> Tensor:
    r"""All ordered pairs of nodes within each graph.

    .. math:: \mathcal{E} = \{(j, i) : b(j) = b(i),\ j \ne i\}

    ``nodes_per_graph`` (every graph that many nodes, stacked in order) gives the layout without
    reading ``batch``; ``device`` is where the edges go when no ``batch`` says so.

    Returns:
        ``edge_index`` :math:`(2, \sum_b n_b (n_b - 1))` (:math:`n_b^2` with loops),
        grouped by centre, sources in node order.
    """
    device = batch.device if batch is not None else device
    sizes = _graph_sizes(batch, num_nodes, nodes_per_graph)
    blocks, start = [], 0
    for n, run in itertools.groupby(sizes):
        count = len(list(run))
        if n:
            # Centre i of a graph takes every other node j of it: local j' + (j' >= i) skips i itself.
            centre = torch.arange(n, device=device).unsqueeze(1)
            other = torch.arange(n if loop else n - 1, device=device).unsqueeze(0)
            source = (other if loop else other + (other >= centre)).expand(n, -1)
            offsets = start + n * torch.arange(count, device=device).view(-1, 1, 1)
            blocks.append(torch.stack([(source + offsets).reshape(-1),
                                       (centre.expand_as(source) + offsets).reshape(-1)]))
        start += n * count
    if not blocks:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]


# --------------------------------------------------------------------------------------
# Selection by name.
# --------------------------------------------------------------------------------------
GRAPH_METHODS: Dict[str, str] = {
    "none": "a self-loop per node and nothing else: the same layers act on each node alone (the no-edge control)",
    "knn": "k nearest neighbours in feature space, built once from the input node features",
    "dynamic": "k nearest neighbours in feature space, rebuilt from each layer's input (DGCNN)",
    "spatial_knn": "k nearest neighbours in image space, over node positions",
    "grid": "4/8-neighbour lattice of the feature map (spatial nodes only)",
    "radius": "all nodes within a radius in image space, over node positions",
    "full": "every pair of nodes of the same image",
}


@dataclass
class GraphConfig:
    """The graph construction's settings (see :class:`GraphBuilder`)."""

    method: str = "dynamic"
    k: int = 8
    cosine: bool = False
    loop: bool = False
    radius: float = 0.25
    max_num_neighbors: int = 32
    connectivity: int = 8
    backend: str = "auto"

    def validate(self, prefix: str = "model.graph") -> None:
        choice(self.method, sorted(GRAPH_METHODS), f"{prefix}.method")
        require(self.k >= 1, f"{prefix}.k", f"must be >= 1, got {self.k}")
        require(self.radius > 0, f"{prefix}.radius", f"must be > 0, got {self.radius}")
        require(self.max_num_neighbors >= 1, f"{prefix}.max_num_neighbors", f"must be >= 1, got {self.max_num_neighbors}")
        choice(self.connectivity, (4, 8), f"{prefix}.connectivity")
        choice(self.backend, KNN_BACKENDS, f"{prefix}.backend")
        require(not (self.method == "radius" and self.backend == "faiss"), f"{prefix}.backend",
                "'faiss' does kNN only; method 'radius' needs 'auto', 'dense' or 'torch_cluster'")


class GraphBuilder:
    r"""Builds the graph named by ``method`` (see :data:`GRAPH_METHODS`) for a mini-batch.

    Its settings are a :class:`GraphConfig` (validated on construction), readable as
    attributes.

    Args:
        method (str): one of :data:`GRAPH_METHODS`. (default: ``"dynamic"``)
        k (int): neighbours for the kNN methods. (default: :obj:`8`)
        cosine (bool): cosine distance for the feature-space kNN. (default: :obj:`False`)
        loop (bool): self-loops. (default: :obj:`False`)
        radius (float): radius for ``"radius"``, in the units of the positions
            (normalised image coordinates in :math:`[0, 1]`). (default: :obj:`0.25`)
        max_num_neighbors (int): cap for ``"radius"``. (default: :obj:`32`)
        connectivity (int): 4 or 8, for ``"grid"``. (default: :obj:`8`)
        backend (str): kNN backend. (default: ``"auto"``)
    """

    def __init__(self, method: str = "dynamic", **options: object) -> None:
        self.config = GraphConfig(method=method, **options)
        self.config.validate("graph")
        _check_backend(self.config.backend)

    @classmethod
    def from_config(cls, config: GraphConfig) -> "GraphBuilder":
        return cls(**asdict(config))

    def __getattr__(self, name: str):
        if name == "config":  # not set yet (e.g. during copying)
            raise AttributeError(name)
        return getattr(self.config, name)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.config})"

    @property
    def is_dynamic(self) -> bool:
        """Whether the graph is rebuilt from each layer's features."""
        return self.method == "dynamic"

    def regular_degree(self, nodes_per_graph: int) -> Optional[int]:
        """The in-degree of every node when the graph gives each the same number of edges,
        grouped by centre in node order (kNN, self-loops only, fully connected), else ``None``."""
        if self.method in ("knn", "dynamic", "spatial_knn"):
            return self.k
        if self.method == "none":
            return 1
        if self.method == "full":
            return nodes_per_graph if self.loop else nodes_per_graph - 1
        return None

    def __call__(
        self,
        x: Tensor,
        batch: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        grid_size: Optional[Tuple[int, int]] = None,
        nodes_per_graph: Optional[int] = None,
    ) -> Tensor:
        """Edges for nodes ``x`` :math:`(N, F)` with positions ``pos`` :math:`(N, 2)`.

        Called in every forward pass, so only shapes are checked here (the public builders
        :func:`knn_graph` and :func:`radius_graph` also check values). With ``nodes_per_graph``
        (every image the same number of regions) no construction but ``"radius"`` reads anything
        back from the device: sizes come from the layout, and every shape is known in advance.
        """
        m = self.method
        _check_features(x)
        if m == "none":
            # Each node its own only neighbour: EdgeConv becomes a node-wise linear map, so the
            # control keeps the layers and readout and loses only the exchange between regions.
            nodes = torch.arange(x.size(0), device=x.device)
            return torch.stack([nodes, nodes])
        if m == "full":
            return fully_connected_graph(x.size(0), batch, loop=self.loop, nodes_per_graph=nodes_per_graph,
                                         device=x.device)
        if m == "grid":
            if grid_size is None:
                raise ValueError("graph method 'grid' needs nodes laid out on a feature-map grid (spatial nodes)")
            h, w = grid_size
            if x.size(0) % (h * w):
                raise ValueError(f"grid {h}x{w} does not divide the {x.size(0)} nodes")
            return grid_graph(h, w, connectivity=self.connectivity, batch_size=x.size(0) // (h * w),
                              loop=self.loop, device=x.device)
        points = x
        if m in ("spatial_knn", "radius"):
            if pos is None:
                raise ValueError(f"graph method {m!r} needs node positions (pos), got None")
            points = pos
        sizes = _graph_sizes(batch, x.size(0), nodes_per_graph)
        with _exact(points.device):
            points = points.detach()
            if points.dtype in (torch.float16, torch.bfloat16):
                points = points.float()
            if m == "radius":
                return _radius(points, self.radius, sizes, batch, self.loop, self.max_num_neighbors, self.backend,
                               check_finite=False)
            _check_k(self.k, sizes, self.loop)
            return _knn(points, self.k, sizes, batch, self.loop, self.cosine and m != "spatial_knn", self.backend,
                        check_finite=False)
