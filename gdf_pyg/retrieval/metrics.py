r"""Retrieval metrics over Hamming ranking.

Conventions (the same in every function here):

- Codes are :math:`\{-1, +1\}^K` (or any real codes, binarised with :math:`\ge 0 \mapsto +1`).
  Hamming distance :math:`d(\mathbf{q}, \mathbf{b}) = (K - \mathbf{q}^\top\mathbf{b}) / 2`.
- The database is ranked for each query by increasing Hamming distance; **ties are broken
  by database order** (the item stored first ranks first), so results are deterministic.
- An item is relevant to a query when they share a label: equal class indices for 1-D
  labels, or at least one common class for multi-hot 2-D labels.
- Average precision of one query over its top :math:`n` (:math:`n = |\mathcal{D}|` for mAP@all):

  .. math::
      \mathrm{AP}@n = \frac{1}{R_n} \sum_{r=1}^{n} P(r)\,\mathrm{rel}(r), \qquad
      P(r) = \frac{1}{r} \sum_{r' \le r} \mathrm{rel}(r')

  with :math:`R_n` the relevant items within the top :math:`n`. A query with no relevant
  item in its top :math:`n` has :math:`\mathrm{AP} = 0` and **is counted** in the mean.
- Precision within Hamming radius :math:`r`: relevant / retrieved among items at distance
  :math:`\le r`; a query that retrieves nothing scores **0** (and is counted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PRCurve",
    "hamming_distance",
    "mean_average_precision",
    "pr_curve",
    "precision_at_k",
    "precision_within_radius",
    "retrieval_report",
]

ArrayLike = Union[Tensor, np.ndarray, Sequence]

# Queries per chunk: bounds memory to about CHUNK x |database| x 4 bytes per temporary.
QUERY_CHUNK = 256


def _as_sign_codes(codes: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(codes) if not isinstance(codes, Tensor) else codes)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (items, bits), got {tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return torch.where(t >= 0, 1.0, -1.0).to(torch.float32)


def _as_labels(labels: ArrayLike, n: int, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    if t.dim() not in (1, 2) or t.size(0) != n:
        raise ValueError(f"{name} must have {n} rows (class ids or multi-hot), got shape {tuple(t.shape)}")
    return t


def _prepare(query_codes, db_codes, query_labels, db_labels):
    q = _as_sign_codes(query_codes, "query_codes")
    b = _as_sign_codes(db_codes, "db_codes")
    if q.size(1) != b.size(1):
        raise ValueError(f"query codes have {q.size(1)} bits, database codes {b.size(1)}")
    ql = _as_labels(query_labels, q.size(0), "query_labels")
    bl = _as_labels(db_labels, b.size(0), "db_labels")
    if ql.dim() != bl.dim():
        raise ValueError("query_labels and db_labels must both be class ids or both multi-hot")
    if b.size(0) == 0:
        raise ValueError("the database is empty")
    return q, b, ql, bl


def _relevance(ql: Tensor, bl: Tensor) -> Tensor:
    if ql.dim() == 1:
        return ql.unsqueeze(1) == bl.unsqueeze(0)
    return (ql.float() @ bl.float().t()) > 0


def hamming_distance(query_codes: ArrayLike, db_codes: ArrayLike) -> Tensor:
    r"""Hamming distances :math:`(Q, D)` (int32) between binarised codes."""
    q = _as_sign_codes(query_codes, "query_codes")
    b = _as_sign_codes(db_codes, "db_codes")
    return ((q.size(1) - q @ b.t()) * 0.5).round().to(torch.int32)


def _ranked_relevance(q: Tensor, b: Tensor, rel: Tensor, topk: int) -> np.ndarray:
    """Relevance flags in ranked order, ``(chunk, topk)`` (integers 0/1).

    One sort of unique integer keys ``(distance * D + index) * 2 + relevant`` orders the
    database by distance then index, and carries the relevance flag in the lowest bit, so no
    gather through an index permutation is needed.
    """
    k_bits, n_db = q.size(1), b.size(0)
    index = torch.arange(n_db)
    if 2.0 * k_bits * n_db + 2.0 * n_db < 2**24:
        # Every key is an exact integer in float32: build it in place on the inner products.
        key = q @ b.t()
        key.mul_(-float(n_db)).add_(float(k_bits * n_db))  # 2 * distance * D
        key.add_(index.to(torch.float32).mul_(2.0)).add_(rel.to(torch.float32))
        key = key.to(torch.int32)
    else:
        dist = ((k_bits - q @ b.t()) * 0.5).round().to(torch.int64)
        key = (dist * n_db + index) * 2 + rel.to(torch.int64)
    ordered = np.sort(key.numpy(), axis=1)
    return ordered[:, :topk] & 1


def _chunk_average_precision(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor, n: int) -> float:
    """Sum of AP@n over the queries of one chunk."""
    flags = _ranked_relevance(q, b, _relevance(ql, bl), n)
    rows, cols = np.nonzero(flags)  # relevant items, row by row, in rank order
    if rows.size == 0:
        return 0.0
    found = np.bincount(rows, minlength=flags.shape[0])
    first = np.cumsum(found) - found
    hits_before = np.arange(rows.size) - first[rows]  # relevant items ranked above this one
    precision = (hits_before + 1.0) / (cols + 1.0)
    ap = np.bincount(rows, weights=precision, minlength=flags.shape[0])
    return float((ap[found > 0] / found[found > 0]).sum())


def _map_over_chunks(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor, n: int) -> float:
    """Sum of AP over all queries; chunks run on a thread per core (the sort releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    starts = range(0, q.size(0), QUERY_CHUNK)
    work = lambda s: _chunk_average_precision(q[s:s + QUERY_CHUNK], b, ql[s:s + QUERY_CHUNK], bl, n)  # noqa: E731
    workers = max(1, min(torch.get_num_threads(), len(starts)))
    if workers == 1:
        return sum(map(work, starts))
    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(work, starts))


def mean_average_precision(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    topk: Optional[int] = None,
) -> float:
    r"""Mean average precision over Hamming ranking (mAP@all, or mAP@``topk``).

    See the module docstring for the exact definition, the tie-break (database order) and
    the treatment of queries without relevant items (AP = 0, counted).

    Args:
        query_codes: :math:`(Q, K)` codes in :math:`\{-1, +1\}` (or real, binarised).
        db_codes: :math:`(D, K)` codes.
        query_labels: :math:`(Q,)` class ids or :math:`(Q, C)` multi-hot.
        db_labels: :math:`(D,)` or :math:`(D, C)`.
        topk: evaluate the top ``topk`` only. (default: :obj:`None`, the whole database)

    Returns:
        mAP as a Python float (float64 accumulation).
    """
    q, b, ql, bl = _prepare(query_codes, db_codes, query_labels, db_labels)
    n_db = b.size(0)
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ValueError(f"topk must be a positive integer or None, got {topk!r}")
    if q.size(0) == 0:
        raise ValueError("there are no queries")
    n = n_db if topk is None else min(topk, n_db)
    return _map_over_chunks(q, b, ql, bl, n) / q.size(0)


def precision_at_k(query_codes, db_codes, query_labels, db_labels, k: int) -> float:
    r"""Mean over queries of the fraction of relevant items among the top ``k`` (ties by
    database order)."""
    q, b, ql, bl = _prepare(query_codes, db_codes, query_labels, db_labels)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = min(k, b.size(0))
    total = 0.0
    for start in range(0, q.size(0), QUERY_CHUNK):
        sl = slice(start, start + QUERY_CHUNK)
        flags = _ranked_relevance(q[sl], b, _relevance(ql[sl], bl), k)
        total += float(flags.sum(dtype=np.float64)) / k
    return total / q.size(0)


@dataclass
class PRCurve:
    """Precision and recall of Hamming-ball retrieval at each radius ``0..K``.

    Precision of a query that retrieves nothing is 0 (counted); recall of a query with no
    relevant item is 0 (counted). Both are means over queries.
    """

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    retrieved: np.ndarray  # mean items retrieved per query

    def to_rows(self) -> list:
        return [
            {"radius": int(r), "precision": float(p), "recall": float(c), "mean_retrieved": float(n)}
            for r, p, c, n in zip(self.radius, self.precision, self.recall, self.retrieved)
        ]


def _radius_counts(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor):
    """Per query and radius: retrieved and relevant-retrieved counts, and relevant totals."""
    k_bits = q.size(1)
    retrieved = torch.zeros(q.size(0), k_bits + 1, dtype=torch.float64)
    hits = torch.zeros_like(retrieved)
    relevant = torch.zeros(q.size(0), dtype=torch.float64)
    for start in range(0, q.size(0), QUERY_CHUNK):
        sl = slice(start, start + QUERY_CHUNK)
        dist = ((k_bits - q[sl] @ b.t()) * 0.5).round().to(torch.int64)
        rel = _relevance(ql[sl], bl)
        ones = torch.ones_like(dist, dtype=torch.float64)
        retrieved[sl].scatter_add_(1, dist, ones)
        hits[sl].scatter_add_(1, dist, rel.to(torch.float64))
        relevant[sl] = rel.sum(1).to(torch.float64)
    return retrieved.cumsum(1), hits.cumsum(1), relevant


def precision_within_radius(query_codes, db_codes, query_labels, db_labels, radius: int = 2) -> float:
    """Mean precision of the items within Hamming distance ``radius`` (empty result = 0)."""
    q, b, ql, bl = _prepare(query_codes, db_codes, query_labels, db_labels)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    retrieved, hits, _ = _radius_counts(q, b, ql, bl)
    r = min(radius, q.size(1))
    n, h = retrieved[:, r], hits[:, r]
    return float(torch.where(n > 0, h / n.clamp_min(1), 0.0).mean())


def pr_curve(query_codes, db_codes, query_labels, db_labels) -> PRCurve:
    """Precision-recall over Hamming radius ``0..K`` (see :class:`PRCurve`)."""
    q, b, ql, bl = _prepare(query_codes, db_codes, query_labels, db_labels)
    retrieved, hits, relevant = _radius_counts(q, b, ql, bl)
    precision = torch.where(retrieved > 0, hits / retrieved.clamp_min(1), 0.0).mean(0)
    recall = torch.where(relevant.unsqueeze(1) > 0, hits / relevant.clamp_min(1).unsqueeze(1), 0.0).mean(0)
    return PRCurve(np.arange(q.size(1) + 1), precision.numpy(), recall.numpy(), retrieved.mean(0).numpy())


def retrieval_report(
    query_codes, db_codes, query_labels, db_labels, topks: Sequence[int] = (100, 1000), radius: int = 2
) -> Dict[str, float]:
    """All scalar metrics of one evaluation, keyed ``map``, ``map@k``, ``p@k``, ``p@r2``."""
    report = {"map": mean_average_precision(query_codes, db_codes, query_labels, db_labels)}
    for k in topks:
        report[f"map@{k}"] = mean_average_precision(query_codes, db_codes, query_labels, db_labels, topk=k)
        report[f"p@{k}"] = precision_at_k(query_codes, db_codes, query_labels, db_labels, k)
    report[f"p@r{radius}"] = precision_within_radius(query_codes, db_codes, query_labels, db_labels, radius)
    return report
