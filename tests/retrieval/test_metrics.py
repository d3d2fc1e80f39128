from __future__ import annotations

import numpy as np
import pytest
import torch

from gdf_pyg.retrieval import metrics
from gdf_pyg.retrieval.metrics import (
    hamming_distance,
    mean_average_precision,
    pr_curve,
    precision_at_k,
    precision_within_radius,
    retrieval_report,
)


def reference_ranking(qc, dc):
    """Float64 Hamming distances and a stable sort: ties keep database order."""
    qc, dc = np.asarray(qc, dtype=np.float64), np.asarray(dc, dtype=np.float64)
    dist = 0.5 * (qc.shape[1] - qc @ dc.T)
    return dist, np.argsort(dist, axis=1, kind="stable")


def relevant(ql, dl):
    ql, dl = np.asarray(ql), np.asarray(dl)
    if ql.ndim == 1:
        return ql[:, None] == dl[None, :]
    return (ql @ dl.T) > 0


def reference_map(qc, dc, ql, dl, topk=None):
    _, order = reference_ranking(qc, dc)
    rel_all = relevant(ql, dl)
    aps = []
    for i in range(len(qc)):
        rel = rel_all[i, order[i]][: topk or len(dc)]
        hits, total = 0, 0.0
        for r, flag in enumerate(rel, start=1):
            if flag:
                hits += 1
                total += hits / r
        aps.append(total / hits if hits else 0.0)
    return float(np.mean(aps))


def random_codes(n, bits, rng):
    return np.where(rng.standard_normal((n, bits)) >= 0, 1.0, -1.0)


@pytest.mark.parametrize("bits", [4, 12, 32])
@pytest.mark.parametrize("topk", [None, 1, 7, 50])
def test_map_equals_reference_with_ties(bits, topk):
    rng = np.random.default_rng(bits)
    # Few bits -> many ties; a label absent from the database -> queries with no relevant item.
    qc, dc = random_codes(40, bits, rng), random_codes(60, bits, rng)
    ql, dl = rng.integers(0, 6, 40), rng.integers(0, 5, 60)
    assert (ql == 5).any()
    ours = mean_average_precision(qc, dc, ql, dl, topk=topk)
    assert ours == pytest.approx(reference_map(qc, dc, ql, dl, topk), abs=1e-12)


def test_map_multi_hot_and_torch_inputs():
    rng = np.random.default_rng(1)
    qc, dc = random_codes(20, 8, rng), random_codes(30, 8, rng)
    ql, dl = rng.integers(0, 2, (20, 4)), rng.integers(0, 2, (30, 4))
    ours = mean_average_precision(torch.tensor(qc), torch.tensor(dc), torch.tensor(ql), torch.tensor(dl))
    assert ours == pytest.approx(reference_map(qc, dc, ql, dl), abs=1e-12)


def test_map_tie_break_is_database_order():
    # Every database item at distance 0: the ranking is the database order.
    qc = np.ones((1, 4))
    dc = np.ones((4, 4))
    assert mean_average_precision(qc, dc, [1], [0, 1, 0, 1]) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert mean_average_precision(qc, dc, [1], [1, 1, 0, 0]) == pytest.approx(1.0)


def test_map_int64_key_path():
    # 3840 bits x 3125 items: keys beyond float32's exact integers take the int64 path.
    rng = np.random.default_rng(3)
    qc, dc = random_codes(10, 64, rng), random_codes(3125, 64, rng)
    qc, dc = np.repeat(qc, 60, axis=1), np.repeat(dc, 60, axis=1)
    assert 2 * qc.shape[1] * len(dc) >= 2**24
    ql, dl = rng.integers(0, 3, 10), rng.integers(0, 3, len(dc))
    assert mean_average_precision(qc, dc, ql, dl) == pytest.approx(reference_map(qc, dc, ql, dl), abs=1e-12)


def test_precision_at_k_and_radius_against_reference():
    rng = np.random.default_rng(7)
    qc, dc = random_codes(25, 6, rng), random_codes(40, 6, rng)
    ql, dl = rng.integers(0, 4, 25), rng.integers(0, 4, 40)
    dist, order = reference_ranking(qc, dc)
    rel = relevant(ql, dl)
    for k in (1, 5, 40, 100):
        ref = np.mean([rel[i, order[i][:k]].sum() / min(k, 40) for i in range(25)])
        assert precision_at_k(qc, dc, ql, dl, k) == pytest.approx(ref, abs=1e-12)
    for r in (0, 1, 2):
        vals = []
        for i in range(25):
            inside = dist[i] <= r
            vals.append(rel[i, inside].sum() / inside.sum() if inside.any() else 0.0)
        assert precision_within_radius(qc, dc, ql, dl, r) == pytest.approx(np.mean(vals), abs=1e-12)
    torch.testing.assert_close(hamming_distance(qc, dc), torch.tensor(dist, dtype=torch.int32))


def test_empty_radius_counts_as_zero():
    qc = np.array([[1.0, 1, 1, 1]])
    dc = -np.ones((3, 4))
    assert precision_within_radius(qc, dc, [0], [0, 0, 0], radius=2) == 0.0


def test_pr_curve_against_reference():
    rng = np.random.default_rng(11)
    qc, dc = random_codes(15, 5, rng), random_codes(30, 5, rng)
    ql, dl = rng.integers(0, 3, 15), rng.integers(0, 4, 30)
    curve = pr_curve(qc, dc, ql, dl)
    dist, _ = reference_ranking(qc, dc)
    rel = relevant(ql, dl)
    for r in range(6):
        inside = dist <= r
        p = [rel[i, inside[i]].sum() / inside[i].sum() if inside[i].any() else 0.0 for i in range(15)]
        c = [rel[i, inside[i]].sum() / rel[i].sum() if rel[i].any() else 0.0 for i in range(15)]
        assert curve.precision[r] == pytest.approx(np.mean(p), abs=1e-12)
        assert curve.recall[r] == pytest.approx(np.mean(c), abs=1e-12)
    assert curve.retrieved[-1] == 30
    assert len(curve.to_rows()) == 6


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    qc, dc = random_codes(33, 8, rng), random_codes(20, 8, rng)
    ql, dl = rng.integers(0, 3, 33), rng.integers(0, 3, 20)
    full = retrieval_report(qc, dc, ql, dl, topks=(5,))
    monkeypatch.setattr(metrics, "QUERY_CHUNK", 4)
    assert retrieval_report(qc, dc, ql, dl, topks=(5,)) == pytest.approx(full, abs=1e-12)
    assert set(full) == {"map", "map@5", "p@5", "p@r2"}


def test_bad_inputs():
    qc, dc = np.ones((2, 4)), np.ones((3, 4))
    with pytest.raises(ValueError, match="query codes have 4 bits, database codes 5"):
        mean_average_precision(qc, np.ones((3, 5)), [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="db_labels must have 3 rows"):
        mean_average_precision(qc, dc, [0, 1], [0, 1])
    with pytest.raises(ValueError, match="topk must be a positive integer"):
        mean_average_precision(qc, dc, [0, 1], [0, 1, 2], topk=0)
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.full((2, 4), np.nan), dc, [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="database is empty"):
        mean_average_precision(qc, np.ones((0, 4)), [0, 1], np.zeros(0, dtype=int))
