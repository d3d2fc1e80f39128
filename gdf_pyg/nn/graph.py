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
from typing import Callable, Dict, Iterator, Optional, Tuple

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
# Input checks shared by every builder.
# --------------------------------------------------------------------------------------
def _check_points(x: Tensor, name: str = "x") -> Tensor:
    """Checks ``x`` and returns its row norms :math:`(N,)` (reused by the dense backend)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (num_nodes, num_features), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    # A row norm is NaN/inf when any entry is: one cheap reduction instead of an (N, F) mask.
    norms = torch.linalg.vector_norm(x, dim=1)
    if x.numel() and not bool(torch.isfinite(norms).all()):
        finite = torch.isfinite(x).all(dim=1)
        if bool(finite.all()):
            raise ValueError(f"{name} has entries too large for {x.dtype}: squared distances overflow")
        bad = (~finite).nonzero().flatten()
        raise ValueError(
            f"{name} contains NaN or inf in {bad.numel()} node(s), first at node {int(bad[0])}: "
            "graph construction needs finite features"
        )
    return norms


def _graph_sizes(batch: Optional[Tensor], num_nodes: int, device: torch.device) -> Tensor:
    """Nodes per graph, checking that ``batch`` is a sorted vector of graph ids."""
    if batch is None:
        return torch.tensor([num_nodes], device=device)
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.numel() != num_nodes:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"batch must be a 1-D tensor with one graph id per node ({num_nodes}), got {shape}")
    if batch.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"batch must hold integer graph ids, got {batch.dtype}")
    if num_nodes == 0:
        return batch.new_zeros(0)
    if int(batch.min()) < 0:
        raise ValueError(f"batch holds a negative graph id ({int(batch.min())})")
    step = batch[1:] - batch[:-1]
    if bool((step < 0).any()):
        pos = int((step < 0).nonzero()[0]) + 1
        raise ValueError(
            f"batch must be sorted (nodes of each graph contiguous, graphs in increasing order); "
            f"it decreases at node {pos}: {int(batch[pos - 1])} -> {int(batch[pos])}"
        )
    return torch.bincount(batch.long())


def _check_k(k: int, sizes: Tensor, loop: bool) -> None:
    check_positive_int(k, "k")
    nonempty = sizes[sizes > 0]
    if nonempty.numel() == 0:
        return
    smallest = int(nonempty.min())
    available = smallest if loop else smallest - 1
    if k > available:
        graph = int(((sizes > 0) & (sizes == smallest)).nonzero()[0])
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


# --------------------------------------------------------------------------------------
# Dense backend.
# --------------------------------------------------------------------------------------
def _to_padded(x: Tensor, sizes: Tensor) -> Tuple[Tensor, Optional[Tensor], int]:
    """``(B, n_max, ...)`` batch of ``x`` ``(N, ...)`` and a ``(B, n_max)`` validity mask.

    Graphs of equal size (every image has the same regions) are a view, no copy and no mask
    (``None``); ``to_dense_batch`` would copy the features once more per call.
    """
    num_graphs = sizes.numel()
    n_max = int(sizes.max()) if num_graphs else 0
    if num_graphs and bool((sizes == n_max).all()):
        return x.view(num_graphs, n_max, *x.shape[1:]), None, n_max
    batch = torch.repeat_interleave(torch.arange(num_graphs, device=x.device), sizes)
    padded, mask = to_dense_batch(x, batch, batch_size=num_graphs, max_num_nodes=n_max)
    return padded, mask, n_max


def _dense_scores(
    xb: Tensor, rows: slice, neg_sq: Optional[Tensor], mask: Optional[Tensor], loop: bool
) -> Tensor:
    r"""Similarity scores, larger = closer, for query rows ``rows`` of every graph in ``xb``.

    Euclidean: :math:`s_{ij} = 2\,x_i^\top x_j - \lVert x_j\rVert^2 = \lVert x_i\rVert^2 - d_{ij}^2`
    (one ``baddbmm``; the row constant does not change the ranking). Cosine (unit inputs,
    ``neg_sq`` is ``None``): :math:`s_{ij} = x_i^\top x_j`.
    """
    query = xb[:, rows]
    if neg_sq is None:
        scores = torch.bmm(query, xb.transpose(1, 2))
    else:
        scores = torch.baddbmm(neg_sq.unsqueeze(1), query, xb.transpose(1, 2), beta=1.0, alpha=2.0)
    if mask is not None:
        scores.masked_fill_(~mask.unsqueeze(1), -math.inf)
    if not loop:
        r = torch.arange(rows.start, rows.stop, device=xb.device)
        scores[:, r - rows.start, r] = -math.inf
    return scores


def _dense_neighbours(
    x: Tensor, sizes: Tensor, cosine: bool, loop: bool, select: Callable[[Tensor], Tuple[Tensor, Tensor]],
    norms: Tensor,
) -> Tuple[Tensor, Tensor]:
    """Runs ``select(scores) -> (values, local_index)`` over chunks of graphs and query rows.

    ``norms`` are the row norms of ``x``. Returns ``values`` and local neighbour indices,
    both ``(B, n_max, m)``.
    """
    if cosine:
        x = x / norms.clamp_min(1e-12).unsqueeze(1)
    xb, mask, n_max = _to_padded(x, sizes)
    num_graphs = xb.size(0)
    neg_sq = None
    if not cosine:
        # Distances do not change when a graph is shifted; centring it first keeps the expanded
        # score 2 x_i.x_j - |x_j|^2 from cancelling when features share a large offset.
        valid = xb if mask is None else xb * mask.unsqueeze(-1)
        xb = xb - valid.sum(1, keepdim=True) / sizes.view(-1, 1, 1).clamp_min(1)
        neg_sq = -xb.square().sum(-1)
    bytes_per_graph = n_max * n_max * xb.element_size()
    graphs_per_chunk = max(1, DENSE_CHUNK_BYTES // max(bytes_per_graph, 1))
    rows_per_chunk = n_max if graphs_per_chunk > 1 or bytes_per_graph <= DENSE_CHUNK_BYTES else max(
        1, DENSE_CHUNK_BYTES // (n_max * xb.element_size())
    )
    values, index = [], []
    for g0 in range(0, num_graphs, graphs_per_chunk):
        g = slice(g0, min(g0 + graphs_per_chunk, num_graphs))
        vals_g, idx_g = [], []
        for r0 in range(0, n_max, rows_per_chunk):
            rows = slice(r0, min(r0 + rows_per_chunk, n_max))
            scores = _dense_scores(
                xb[g], rows, None if neg_sq is None else neg_sq[g], None if mask is None else mask[g], loop
            )
            v, i = select(scores)
            vals_g.append(v)
            idx_g.append(i)
        values.append(torch.cat(vals_g, dim=1))
        index.append(torch.cat(idx_g, dim=1))
    return torch.cat(values, dim=0), torch.cat(index, dim=0)


def _centre_ids(sizes: Tensor, n_max: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Global ids of each padded row ``(B, n_max)`` and whether the row is a real node."""
    ptr = torch.cumsum(sizes, 0) - sizes
    local = torch.arange(n_max, device=device)
    return ptr.unsqueeze(1) + local, local.unsqueeze(0) < sizes.unsqueeze(1)


def _dense_knn(x: Tensor, k: int, sizes: Tensor, loop: bool, cosine: bool, norms: Tensor) -> Tensor:
    # Our own: PyG's knn_graph now needs pyg-lib (not on PyPI), and in feature space one batched
    # matrix product + topk beats torch-cluster's KD-tree 30x (benchmarks/graph_construction.py).
    _, local_nbr = _dense_neighbours(x, sizes, cosine, loop, lambda s: torch.topk(s, k, dim=-1), norms)
    n_max = local_nbr.size(1)
    centre, valid = _centre_ids(sizes, n_max, x.device)
    ptr = (torch.cumsum(sizes, 0) - sizes).view(-1, 1, 1)
    source = (local_nbr + ptr)[valid]  # (N, k)
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


def _torch_cluster_knn(x: Tensor, k: int, batch: Optional[Tensor], loop: bool, cosine: bool) -> Tensor:
    import torch_cluster

    if cosine:
        x = F.normalize(x, dim=-1)
    want = k if loop else k + 1
    num_workers = torch.get_num_threads() if batch is None else 1
    centre, nbr = torch_cluster.knn(x, x, want, batch, batch, num_workers=num_workers)
    nbr, centre = _sort_by_centre_then_distance(x, nbr, centre)
    return _drop_self(nbr.view(-1, want), centre.view(-1, want), k, loop)


def _faiss_knn(x: Tensor, k: int, sizes: Tensor, loop: bool, cosine: bool) -> Tensor:
    """Exact brute-force search of FAISS, one call per graph (CPU, float32)."""
    import faiss

    if cosine:
        x = F.normalize(x, dim=-1)
    want = k if loop else k + 1
    feats = x.detach().to("cpu", torch.float32).contiguous().numpy()
    nbrs, start = [], 0
    for n in sizes.tolist():
        if n:
            block = feats[start:start + n]
            _, idx = faiss.knn(block, block, want)
            nbrs.append(torch.from_numpy(idx).to(torch.long) + start)
        start += n
    nbr = torch.cat(nbrs).view(-1).to(x.device)
    centre = torch.arange(x.size(0), device=x.device).repeat_interleave(want)
    nbr, centre = _sort_by_centre_then_distance(x, nbr, centre)
    return _drop_self(nbr.view(-1, want), centre.view(-1, want), k, loop)


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
    norms = _check_points(x)
    sizes = _graph_sizes(batch, x.size(0), x.device)
    _check_k(k, sizes, loop)
    _check_backend(backend)
    if x.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    if backend == "auto":
        backend = select_backend(x.size(1), int(sizes.max()), x.device)
    if backend == "torch_cluster":
        return _torch_cluster_knn(x, k, batch, loop, cosine)
    if backend == "faiss":
        return _faiss_knn(x, k, sizes, loop, cosine)
    return _dense_knn(x, k, sizes, loop, cosine, norms)


@_full_precision
def radius_graph(
    x: Tensor,
    r: float,
    batch: Optional[Tensor] = None,
    *,
    loop: bool = False,
    max_num_neighbors: int = 32,
    backend: str = "auto",
) -> Tensor:
    r"""Connects each node to the nodes of its graph within Euclidean distance ``r``.

    .. math::
        \mathcal{E} = \{(j, i) : b(j) = b(i),\ \lVert \mathbf{x}_i - \mathbf{x}_j \rVert_2 \le r\}

    keeping, per centre, the ``max_num_neighbors`` nearest when more qualify (the
    ``torch_cluster`` backend keeps an arbitrary subset instead, as ``torch-cluster`` does;
    both agree whenever no node has more than ``max_num_neighbors`` neighbours in range).

    Args:
        x (Tensor): node positions or features :math:`(N, F)`, finite.
        r (float): radius, > 0.
        batch (Tensor, optional): sorted graph id of each node :math:`(N,)`.
        loop (bool): whether to include self-loops. (default: :obj:`False`)
        max_num_neighbors (int): cap on incoming edges per node. (default: :obj:`32`)
        backend (str): ``"auto"``, ``"dense"`` or ``"torch_cluster"``.

    Returns:
        ``edge_index`` :math:`(2, |\mathcal{E}|)`, grouped by centre, nearest first.
    """
    norms = _check_points(x)
    if backend == "faiss":
        raise ValueError("radius_graph supports backends 'auto', 'dense' and 'torch_cluster', not 'faiss'")
    check_positive_finite(r, "r")
    check_positive_int(max_num_neighbors, "max_num_neighbors")
    sizes = _graph_sizes(batch, x.size(0), x.device)
    _check_backend(backend)
    if x.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    if backend == "auto":
        backend = select_backend(x.size(1), int(sizes.max()), x.device)
    if backend == "torch_cluster":
        return _torch_cluster_radius(x, float(r), batch, loop, max_num_neighbors)
    return _dense_radius(x, float(r), sizes, loop, max_num_neighbors, norms)


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


def _dense_radius(x: Tensor, r: float, sizes: Tensor, loop: bool, max_num_neighbors: int, norms: Tensor) -> Tensor:
    m = min(max_num_neighbors, int(sizes.max()))
    scores, local_nbr = _dense_neighbours(x, sizes, False, loop, lambda s: torch.topk(s, m, dim=-1), norms)
    n_max = local_nbr.size(1)
    centre, valid = _centre_ids(sizes, n_max, x.device)
    ptr = (torch.cumsum(sizes, 0) - sizes).view(-1, 1, 1)
    real = torch.isfinite(scores[valid])  # (N, m): False where topk ran out of nodes
    source = (local_nbr + ptr)[valid][real]
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
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    ys, xs = ys.reshape(-1, 1), xs.reshape(-1, 1)
    dy = torch.tensor([o[0] for o in offsets], device=device)
    dx = torch.tensor([o[1] for o in offsets], device=device)
    ny, nx = ys + dy, xs + dx  # (HW, len(offsets))
    valid = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
    centre = (ys * width + xs).expand_as(ny)[valid]
    source = (ny * width + nx)[valid]
    shift = (torch.arange(batch_size, device=device) * height * width).view(-1, 1)
    return torch.stack([(source + shift).reshape(-1), (centre + shift).reshape(-1)], dim=0)


def fully_connected_graph(num_nodes: int, batch: Optional[Tensor] = None, *, loop: bool = False) -> Tensor:
    r"""All ordered pairs of nodes within each graph.

    .. math:: \mathcal{E} = \{(j, i) : b(j) = b(i),\ j \ne i\}

    Returns:
        ``edge_index`` :math:`(2, \sum_b n_b (n_b - 1))` (:math:`n_b^2` with loops),
        grouped by centre.
    """
    device = batch.device if batch is not None else None
    sizes = _graph_sizes(batch, num_nodes, device or torch.device("cpu"))
    if num_nodes == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    ptr = torch.cumsum(sizes, 0) - sizes
    graph = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)
    centre = torch.repeat_interleave(torch.arange(num_nodes, device=sizes.device), sizes[graph])
    # Position of each edge within its centre's block, and so its source's local index.
    block_start = torch.repeat_interleave(torch.cumsum(sizes[graph], 0) - sizes[graph], sizes[graph])
    local = torch.arange(centre.numel(), device=sizes.device) - block_start
    source = ptr[graph[centre]] + local
    edge_index = torch.stack([source, centre], dim=0)
    if not loop:
        edge_index = edge_index[:, source != centre]
    return edge_index


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

    def __call__(
        self,
        x: Tensor,
        batch: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        grid_size: Optional[Tuple[int, int]] = None,
    ) -> Tensor:
        """Edges for nodes ``x`` :math:`(N, F)` with positions ``pos`` :math:`(N, 2)`."""
        m = self.method
        if m == "none":
            # Each node its own only neighbour: EdgeConv becomes a node-wise linear map, so the
            # control keeps the layers and readout and loses only the exchange between regions.
            nodes = torch.arange(x.size(0), device=x.device)
            return torch.stack([nodes, nodes])
        if m in ("knn", "dynamic"):
            return knn_graph(x, self.k, batch, loop=self.loop, cosine=self.cosine, backend=self.backend)
        if m == "full":
            return fully_connected_graph(x.size(0), batch, loop=self.loop)
        if pos is None:
            raise ValueError(f"graph method {m!r} needs node positions (pos), got None")
        if m == "spatial_knn":
            return knn_graph(pos, self.k, batch, loop=self.loop, backend=self.backend)
        if m == "radius":
            return radius_graph(
                pos, self.radius, batch, loop=self.loop, max_num_neighbors=self.max_num_neighbors, backend=self.backend
            )
        # grid
        if grid_size is None:
            raise ValueError("graph method 'grid' needs nodes laid out on a feature-map grid (spatial nodes)")
        h, w = grid_size
        if x.size(0) % (h * w):
            raise ValueError(f"grid {h}x{w} does not divide the {x.size(0)} nodes")
        return grid_graph(h, w, connectivity=self.connectivity, batch_size=x.size(0) // (h * w),
                          loop=self.loop, device=x.device)
