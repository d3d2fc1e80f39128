r"""Retrieval metrics over Hamming ranking.

Conventions (the same in every function here):

- Codes are :math:`\{-1, +1\}^K`; anything else is refused (binarise relaxed codes explicitly
  with :func:`gdf_pyg.binarize`). Hamming distance :math:`d(\mathbf{q}, \mathbf{b}) =
  (K - \mathbf{q}^\top\mathbf{b}) / 2` takes only the :math:`K + 1` values :math:`0 \dots K`.
- The database is ranked for each query by increasing Hamming distance. Items at equal
  distance are tied, and how ties are ordered changes rank-based metrics a lot at short code
  lengths. ``ties="average"`` (the default) reports the **exact expected value over every order
  of the tied items** (McSherry & Najork, "Computing information retrieval performance measures
  efficiently in the presence of tied scores", ECIR 2008), which does not depend on the order
  of the database; ``ties="database_order"`` breaks ties by database order (the item stored
  first ranks first), the rule of most published code, for comparison with it.
- An item is relevant to a query when they share a label: equal class ids for 1-D labels
  (ids must be >= 0: -1 marks an unlabelled item and is refused), or at least one common class
  for multi-hot 2-D labels.
- Average precision of one query over its top :math:`n` (:math:`n = |\mathcal{D}|` for mAP@all):

  .. math::
      \mathrm{AP}@n = \frac{1}{R_n} \sum_{r=1}^{n} P(r)\,\mathrm{rel}(r), \qquad
      P(r) = \frac{1}{r} \sum_{r' \le r} \mathrm{rel}(r')

  with :math:`R_n` the relevant items within the top :math:`n`. A query with no relevant
  item in its top :math:`n` has :math:`\mathrm{AP} = 0` and **is counted** in the mean.
- Precision within Hamming radius :math:`r`: relevant / retrieved among items at distance
  :math:`\le r`; a query that retrieves nothing scores **0** (and is counted).

Tie-aware values come from per-query counts of retrieved and relevant items at each distance
(:func:`distance_counts`), without sorting the database: a tie group of :math:`n` items, :math:`r`
of them relevant, after :math:`s` items of which :math:`R_s` are relevant, adds in expectation

.. math::
    \frac{r}{n}\Big[(R_s + 1)\,A + \frac{r - 1}{n - 1}\big(n - (s + 1)A\big)\Big], \qquad
    A = \sum_{i=1}^{n} \frac{1}{s + i} = H_{s+n} - H_s

to :math:`\sum_r P(r)\,\mathrm{rel}(r)` (:math:`H` the harmonic numbers). At a cut-off
:math:`n` inside a tie group, the number of relevant items above the cut is hypergeometric and
the expectation is taken over it exactly.
"""
from __future__ import annotations

# Our own: no maintained library computes tie-aware AP, or AP from Hamming-distance counts.
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..utils.checks import check_positive_int
from ..utils.codes import check_binary, hamming_from_inner, inner_products, matmul_operands

__all__ = [
    "score_mean_average_precision",
    "TIES",
    "DistanceCounts",
    "PRCurve",
    "average_precisions",
    "distance_counts",
    "hamming_distance",
    "mean_average_precision",
    "pr_curve",
    "precision_at_k",
    "precision_within_radius",
    "retrieval_report",
]

ArrayLike = Union[Tensor, np.ndarray, Sequence]
TIES = ("average", "database_order")

# Queries per chunk: bounds memory to about CHUNK x |database| x 4 bytes per temporary.
QUERY_CHUNK = 256


# --------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------
def _as_tensor(values: ArrayLike) -> Tensor:
    return values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values))


def _as_labels(labels: ArrayLike, n: int, name: str) -> Tensor:
    t = _as_tensor(labels)
    if t.dim() not in (1, 2) or t.size(0) != n:
        raise ValueError(f"{name} must have {n} rows (class ids or multi-hot), got shape {tuple(t.shape)}")
    if t.dim() == 1 and t.numel() and int(t.min()) < 0:
        row = int((t < 0).nonzero()[0])
        raise ValueError(f"{name}[{row}] is {int(t[row])}: labelled metrics need class ids >= 0 "
                         "(-1 marks an unlabelled item, which is relevant to nothing)")
    return t


def _prepare(query_codes, db_codes, query_labels, db_labels) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    q = check_binary(_as_tensor(query_codes), "query_codes")
    b = check_binary(_as_tensor(db_codes), "db_codes")
    if q.size(1) != b.size(1):
        raise ValueError(f"query codes have {q.size(1)} bits, database codes {b.size(1)}")
    ql = _as_labels(query_labels, q.size(0), "query_labels")
    bl = _as_labels(db_labels, b.size(0), "db_labels")
    if ql.dim() != bl.dim():
        raise ValueError("query_labels and db_labels must both be class ids or both multi-hot")
    if b.size(0) == 0:
        raise ValueError("the database is empty")
    if q.size(0) == 0:
        raise ValueError("there are no queries")
    return q, b, ql, bl


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


def _relevance(ql: Tensor, bl: Tensor) -> Tensor:
    if ql.dim() == 1:
        return ql.unsqueeze(1) == bl.unsqueeze(0)
    return (ql.float() @ bl.float().t()) > 0


def hamming_distance(query_codes: ArrayLike, db_codes: ArrayLike) -> Tensor:
    r"""Hamming distances :math:`(Q, D)` (int32) between :math:`\{-1, +1\}` codes."""
    q = check_binary(_as_tensor(query_codes), "query_codes")
    b = check_binary(_as_tensor(db_codes), "db_codes")
    return hamming_from_inner(inner_products(q, b), q.size(1))


# --------------------------------------------------------------------------------------
# Counts per Hamming distance.
# --------------------------------------------------------------------------------------
@dataclass
class DistanceCounts:
    """Per query and Hamming distance ``0..K``: items retrieved and relevant items, ``(Q, K+1)``
    int64, and the relevant items of each query in the whole database, ``(Q,)``."""

    retrieved: Tensor
    relevant: Tensor

    @property
    def total_relevant(self) -> Tensor:
        return self.relevant.sum(1)


# Entries per chunk of the all-pairs histograms: small enough to stay in cache between passes.
HISTOGRAM_CHUNK = 1 << 21


def _histograms(q: Tensor, b: Tensor) -> Tensor:
    """Items per distance of every query, ``(Q, K+1)``: per chunk of queries, one exact integer
    matrix product and one bincount of ``2 * (row * (K + 1) + distance) = 2 * row * (K + 1) + K
    - <q, b>`` (odd keys never occur). In int16 where the keys fit, which halves the memory
    traffic of the passes; 50,000 x 50,000 codes of 48 bits take about 4 s on 2 cores."""
    k, n_q, n_db = q.size(1), q.size(0), b.size(0)
    rows = max(1, min(n_q, HISTOGRAM_CHUNK // max(n_db, 1)))
    small = k <= 256  # then fewer rows per chunk keep the keys below 2**15
    rows = min(rows, (2**15 - 1) // (2 * (k + 1))) if small else min(rows, 2**30 // (2 * (k + 1)))
    dtype = torch.int16 if small else torch.int32
    base = (torch.arange(rows, dtype=torch.int32) * (2 * (k + 1)) + k).to(dtype).unsqueeze(1)
    q, b = matmul_operands(q, b)  # once, not per chunk
    parts = []
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        key = torch.sub(base[: stop - start], inner_products(q[start:stop], b, dtype))
        parts.append(torch.bincount(key.view(-1), minlength=2 * (stop - start) * (k + 1)).view(-1, k + 1, 2)[..., 0])
    return torch.cat(parts)


def _by_class(codes: Tensor, labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Codes grouped by class id into a zero-padded ``(C, n_max, K)`` block, with each slot's
    row in ``codes`` (-1 for padding)."""
    order = torch.argsort(labels, stable=True)
    sizes = torch.bincount(labels, minlength=num_classes)
    start = torch.cumsum(sizes, 0) - sizes
    sorted_labels = labels[order]
    slot = torch.arange(len(labels)) - start[sorted_labels]
    n_max = int(sizes.max()) if len(labels) else 0
    block = codes.new_zeros(num_classes, n_max, codes.size(1))
    block[sorted_labels, slot] = codes[order]
    rows = torch.full((num_classes, n_max), -1, dtype=torch.long)
    rows[sorted_labels, slot] = order
    return block, rows, sizes


def _relevant_histograms(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor) -> Tensor:
    """Relevant items per distance. With class ids only the pairs within each class are compared:
    one batched product over classes, padded to the largest."""
    k = q.size(1)
    if ql.dim() == 1:
        classes, inverse = torch.unique(torch.cat([ql, bl]), return_inverse=True)
        qb, q_rows, _ = _by_class(q, inverse[: len(ql)], len(classes))
        bb, b_rows, _ = _by_class(b, inverse[len(ql):], len(classes))
        dist = hamming_from_inner(torch.bmm(qb, bb.transpose(1, 2)), k)  # (C, nq_max, nb_max), exact
        valid = (q_rows >= 0).unsqueeze(2) & (b_rows >= 0).unsqueeze(1)
        key = (q_rows.unsqueeze(2) * (k + 1) + dist)[valid]
        return torch.bincount(key, minlength=q.size(0) * (k + 1)).view(q.size(0), k + 1)
    out = torch.zeros(q.size(0), k + 1, dtype=torch.int64)
    for start in range(0, q.size(0), QUERY_CHUNK):
        sl = slice(start, start + QUERY_CHUNK)
        dist = hamming_from_inner(inner_products(q[sl], b), k).to(torch.int64)
        out[sl] = out[sl].scatter_add_(1, dist, _relevance(ql[sl], bl).to(torch.int64))
    return out


def distance_counts(query_codes: ArrayLike, db_codes: ArrayLike, query_labels: ArrayLike,
                    db_labels: ArrayLike) -> DistanceCounts:
    """Retrieved and relevant items of each query at each Hamming distance (see
    :class:`DistanceCounts`): everything a tie-aware ranking metric needs."""
    q, b, ql, bl = _prepare(query_codes, db_codes, query_labels, db_labels)
    return _counts(q, b, ql, bl)


def _counts(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor) -> DistanceCounts:
    return DistanceCounts(_histograms(q, b).to(torch.int64), _relevant_histograms(q, b, ql, bl).to(torch.int64))


# --------------------------------------------------------------------------------------
# Tie-aware average precision from counts.
# --------------------------------------------------------------------------------------
def _harmonic(n: int) -> np.ndarray:
    """Harmonic numbers ``H_0 .. H_n`` (float64)."""
    h = np.zeros(n + 1)
    np.cumsum(1.0 / np.arange(1, n + 1), out=h[1:])
    return h


def _group_precision_sum(n: np.ndarray, r: np.ndarray, s: np.ndarray, rel_before: np.ndarray,
                         harmonic: np.ndarray) -> np.ndarray:
    r"""Expected :math:`\sum P(\mathrm{rank})` over the relevant items of tie groups of ``n``
    items (``r`` relevant) after ``s`` items (``rel_before`` relevant), every order equally likely."""
    a = harmonic[s + n] - harmonic[s]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(n > 0, r / np.maximum(n, 1), 0.0)
        inner = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1) * (n - (s + 1) * a), 0.0)
    return frac * ((rel_before + 1) * a + inner)


def _average_precision_all(counts: DistanceCounts, harmonic: np.ndarray) -> np.ndarray:
    n = counts.retrieved.numpy()
    r = counts.relevant.numpy()
    s = np.cumsum(n, axis=1) - n
    rel_before = np.cumsum(r, axis=1) - r
    total = _group_precision_sum(n, r, s, rel_before, harmonic).sum(1)
    big_r = r.sum(1)
    return np.where(big_r > 0, total / np.maximum(big_r, 1), 0.0)


def _log_binomial(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def _average_precision_at(counts: DistanceCounts, topk: int, harmonic: np.ndarray) -> np.ndarray:
    """Expected AP@topk: groups above the cut count whole; in the group the cut falls in, the
    relevant items above the cut are hypergeometric (``m`` of its ``n`` places above the cut)."""
    n = counts.retrieved.numpy()
    r = counts.relevant.numpy()
    cum = np.cumsum(n, axis=1)
    s_all, rel_before_all = cum - n, np.cumsum(r, axis=1) - r
    whole = cum <= topk  # groups entirely above the cut
    above = np.where(whole, _group_precision_sum(n, r, s_all, rel_before_all, harmonic), 0.0).sum(1)
    rows = np.arange(n.shape[0])
    g = np.minimum(whole.sum(1), n.shape[1] - 1)  # the group the cut falls in
    s, ng, rg, rel_before = s_all[rows, g], n[rows, g], r[rows, g], rel_before_all[rows, g]
    m = np.clip(topk - s, 0, ng)  # places of that group above the cut
    ap = np.where(rel_before > 0, above / np.maximum(rel_before, 1), 0.0)  # no relevant item in the group
    mixed = (rg > 0) & (m > 0)
    if mixed.any():
        ap[mixed] = _expected_cut_ap(ng[mixed], rg[mixed], m[mixed], s[mixed], rel_before[mixed], above[mixed], harmonic)
    return ap


def _expected_cut_ap(ng, rg, m, s, rel_before, above, harmonic) -> np.ndarray:
    """AP@cut where ``m`` of a group's ``ng`` places (``rg`` relevant) are above the cut: the
    expectation over ``j``, the relevant items among those ``m`` places (hypergeometric)."""
    js = np.arange(int(np.minimum(rg, m).max()) + 1)[None, :]
    valid = (js <= np.minimum(rg, m)[:, None]) & (js >= (m - (ng - rg))[:, None])
    with np.errstate(invalid="ignore"):
        log_p = (_log_binomial(rg[:, None], js) + _log_binomial((ng - rg)[:, None], m[:, None] - js)
                 - _log_binomial(ng, m)[:, None])
    prob = np.where(valid, np.exp(np.where(valid, log_p, 0.0)), 0.0)
    part = _group_precision_sum(m[:, None], js, s[:, None], rel_before[:, None], harmonic)
    found = rel_before[:, None] + js
    ap = np.where(found > 0, (above[:, None] + part) / np.maximum(found, 1), 0.0)
    return (prob * ap).sum(1)


# --------------------------------------------------------------------------------------
# Database-order rule (a sort per query).
# --------------------------------------------------------------------------------------
def _ranked_relevance(q: Tensor, b: Tensor, rel: Tensor, topk: int) -> np.ndarray:
    """Relevance flags in ranked order, ``(chunk, topk)`` (integers 0/1), ties by database order.

    One sort of unique integer keys ``(distance * D + index) * 2 + relevant`` orders the
    database by distance then index, and carries the relevance flag in the lowest bit.
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
        dist = hamming_from_inner(q @ b.t(), k_bits).to(torch.int64)
        key = (dist * n_db + index) * 2 + rel.to(torch.int64)
    ordered = np.sort(key.numpy(), axis=1)
    return ordered[:, :topk] & 1


def _chunk_average_precision(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor, n: int) -> np.ndarray:
    """AP@n of the queries of one chunk, ties by database order."""
    flags = _ranked_relevance(q, b, _relevance(ql, bl), n)
    rows, cols = np.nonzero(flags)  # relevant items, row by row, in rank order
    found = np.bincount(rows, minlength=flags.shape[0])
    first = np.cumsum(found) - found
    hits_before = np.arange(rows.size) - first[rows]  # relevant items ranked above this one
    ap = np.bincount(rows, weights=(hits_before + 1.0) / (cols + 1.0), minlength=flags.shape[0])
    return np.where(found > 0, ap / np.maximum(found, 1), 0.0)


def _database_order_ap(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor, n: int) -> np.ndarray:
    starts = range(0, q.size(0), QUERY_CHUNK)
    work = lambda s: _chunk_average_precision(q[s:s + QUERY_CHUNK], b, ql[s:s + QUERY_CHUNK], bl, n)  # noqa: E731
    workers = max(1, min(torch.get_num_threads(), len(starts)))
    if workers == 1:
        return np.concatenate(list(map(work, starts)))
    with ThreadPoolExecutor(workers) as pool:  # the sort releases the GIL
        return np.concatenate(list(pool.map(work, starts)))


# --------------------------------------------------------------------------------------
# Public metrics.
# --------------------------------------------------------------------------------------
def _check_topk(topk: Optional[int], n_db: int) -> int:
    if topk is None:
        return n_db
    return min(check_positive_int(topk, "topk"), n_db)


def _average_precisions(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor, topk: Optional[int], ties: str,
                        counts: Optional[DistanceCounts] = None) -> np.ndarray:
    n = _check_topk(topk, b.size(0))
    if ties == "database_order":
        return _database_order_ap(q, b, ql, bl, n)
    counts = counts if counts is not None else _counts(q, b, ql, bl)
    harmonic = _harmonic(b.size(0))
    return _average_precision_all(counts, harmonic) if n >= b.size(0) else _average_precision_at(counts, n, harmonic)


def _map(q: Tensor, b: Tensor, ql: Tensor, bl: Tensor, topk: Optional[int], ties: str,
         counts: Optional[DistanceCounts] = None) -> float:
    return float(_average_precisions(q, b, ql, bl, topk, ties, counts).mean())


def mean_average_precision(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    topk: Optional[int] = None,
    ties: str = "average",
) -> float:
    r"""Mean average precision over Hamming ranking (mAP@all, or mAP@``topk``).

    See the module docstring for the exact definition, the tie rules and the treatment of
    queries without relevant items (AP = 0, counted).

    Args:
        query_codes: :math:`(Q, K)` codes in :math:`\{-1, +1\}`.
        db_codes: :math:`(D, K)` codes in :math:`\{-1, +1\}`.
        query_labels: :math:`(Q,)` class ids or :math:`(Q, C)` multi-hot.
        db_labels: :math:`(D,)` or :math:`(D, C)`.
        topk: evaluate the top ``topk`` only. (default: :obj:`None`, the whole database)
        ties: ``"average"`` (the exact expectation over every order of tied items, independent
            of the database order) or ``"database_order"``. (default: ``"average"``)

    Returns:
        mAP as a Python float (float64 accumulation).
    """
    return float(average_precisions(query_codes, db_codes, query_labels, db_labels, topk, ties).mean())


def average_precisions(
    query_codes: ArrayLike,
    db_codes: ArrayLike,
    query_labels: ArrayLike,
    db_labels: ArrayLike,
    topk: Optional[int] = None,
    ties: str = "average",
) -> np.ndarray:
    r"""The average precision of every query, :math:`(Q,)` float64: the terms whose mean is
    :func:`mean_average_precision` (same arguments and rules). Shows where a mAP is lost,
    e.g. a few queries near 0 or many queries a little below 1."""
    _check_ties(ties)
    q, b, ql, bl = _prepare(query_codes, db_codes, query_labels, db_labels)
    return _average_precisions(q, b, ql, bl, topk, ties)


def _precision_at(q, b, ql, bl, k: int, ties: str, counts: Optional[DistanceCounts] = None) -> float:
    k = min(check_positive_int(k, "k"), b.size(0))
    if ties == "database_order":
        total = 0.0
        for start in range(0, q.size(0), QUERY_CHUNK):
            sl = slice(start, start + QUERY_CHUNK)
            total += float(_ranked_relevance(q[sl], b, _relevance(ql[sl], bl), k).sum(dtype=np.float64))
        return total / (k * q.size(0))
    counts = counts if counts is not None else _counts(q, b, ql, bl)
    n, r = counts.retrieved.numpy(), counts.relevant.numpy()
    cum = np.cumsum(n, axis=1)
    # Whole groups above the cut, and the expected relevant share of the places taken in the next.
    whole = cum <= k
    found = np.where(whole, r, 0).sum(1).astype(np.float64)
    g = np.minimum(whole.sum(1), n.shape[1] - 1)
    rows = np.arange(n.shape[0])
    m = np.where(whole[rows, g], 0, k - (cum - n)[rows, g])
    found += m * r[rows, g] / np.maximum(n[rows, g], 1)
    return float(found.sum() / (k * q.size(0)))


def precision_at_k(query_codes, db_codes, query_labels, db_labels, k: int, ties: str = "average") -> float:
    r"""Mean over queries of the fraction of relevant items among the top ``k``: its expectation
    over every order of tied items (``ties="average"``), or ties by database order."""
    _check_ties(ties)
    q, b, ql, bl = _prepare(query_codes, db_codes, query_labels, db_labels)
    return _precision_at(q, b, ql, bl, k, ties)


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


def _pr_curve(counts: DistanceCounts) -> PRCurve:
    retrieved = counts.retrieved.cumsum(1).to(torch.float64)
    hits = counts.relevant.cumsum(1).to(torch.float64)
    relevant = counts.total_relevant.to(torch.float64)
    precision = torch.where(retrieved > 0, hits / retrieved.clamp_min(1), 0.0).mean(0)
    recall = torch.where(relevant.unsqueeze(1) > 0, hits / relevant.clamp_min(1).unsqueeze(1), 0.0).mean(0)
    return PRCurve(np.arange(retrieved.size(1)), precision.numpy(), recall.numpy(), retrieved.mean(0).numpy())


def score_mean_average_precision(scores: ArrayLike, query_labels: ArrayLike, db_labels: ArrayLike) -> float:
    r"""mAP@all of a ranking by real-valued scores (larger = nearer), e.g. the cosine of float
    features: the reference that binary codes are held against.

    .. math:: \mathrm{AP}_q = \frac{1}{R_q} \sum_{n} \mathrm{rel}_q(n) \frac{\sum_{m \le n} \mathrm{rel}_q(m)}{n}

    over the database sorted by decreasing score (ties, improbable with float scores, by database
    order); a query with no relevant item has AP 0.

    Args:
        scores (Tensor): :math:`(N_q, N_{db})`.
        query_labels, db_labels: class ids :math:`(N_q,)`, :math:`(N_{db},)`.
    """
    s = _as_tensor(scores).double()
    ql, bl = _as_labels(query_labels, s.size(0), "query_labels"), _as_labels(db_labels, s.size(1), "db_labels")
    order = torch.argsort(-s, dim=1, stable=True)
    rel = (bl[order] == ql.unsqueeze(1)).double()
    hits = rel.cumsum(1)
    ranks = torch.arange(1, s.size(1) + 1, dtype=torch.float64)
    ap = (rel * hits / ranks).sum(1) / rel.sum(1).clamp_min(1.0)
    return float(ap.mean()) if len(ap) else 0.0


def precision_within_radius(query_codes, db_codes, query_labels, db_labels, radius: int = 2) -> float:
    """Mean precision of the items within Hamming distance ``radius`` (empty result = 0)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    curve = _pr_curve(distance_counts(query_codes, db_codes, query_labels, db_labels))
    return float(curve.precision[min(radius, len(curve.radius) - 1)])


def pr_curve(query_codes, db_codes, query_labels, db_labels) -> PRCurve:
    """Precision-recall over Hamming radius ``0..K`` (see :class:`PRCurve`)."""
    return _pr_curve(distance_counts(query_codes, db_codes, query_labels, db_labels))


def retrieval_report(
    query_codes, db_codes, query_labels, db_labels, topks: Sequence[int] = (100, 1000), radius: int = 2
) -> Tuple[Dict[str, float], PRCurve]:
    """Every metric of one evaluation from one pass over the distances, and the PR curve.

    Keys: ``map`` (mAP@all, ties averaged), ``map_db_order`` (mAP@all, ties by database
    order), ``map@k`` and ``p@k`` (ties averaged) for each ``k`` of ``topks``, ``p@r<radius>``.
    """
    q, b, ql, bl = _prepare(query_codes, db_codes, query_labels, db_labels)
    counts = _counts(q, b, ql, bl)
    report = {"map": _map(q, b, ql, bl, None, "average", counts),
              "map_db_order": _map(q, b, ql, bl, None, "database_order")}
    for k in topks:
        report[f"map@{k}"] = _map(q, b, ql, bl, k, "average", counts)
        report[f"p@{k}"] = _precision_at(q, b, ql, bl, k, "average", counts)
    curve = _pr_curve(counts)
    report[f"p@r{radius}"] = float(curve.precision[min(radius, len(curve.radius) - 1)])
    return report, curve
