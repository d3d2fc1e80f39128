from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from gdf_pyg.retrieval import metrics
from gdf_pyg.retrieval.metrics import (
    average_precisions,
    distance_counts,
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


def reference_aps(qc, dc, ql, dl, topk=None):
    """Per-query AP with ties by database order, one query at a time in float64."""
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
    return np.array(aps)


def reference_map(qc, dc, ql, dl, topk=None):
    return float(reference_aps(qc, dc, ql, dl, topk).mean())


def reference_precision(qc, dc, ql, dl, k):
    _, order = reference_ranking(qc, dc)
    rel = relevant(ql, dl)
    return float(np.mean([rel[i, order[i][:k]].sum() / min(k, len(dc)) for i in range(len(qc))]))


def over_every_order(fn, qc, dc, ql, dl, *args):
    """The mean of a database-order metric over every permutation of the database."""
    values = [fn(qc, dc[list(p)], ql, np.asarray(dl)[list(p)], *args) for p in itertools.permutations(range(len(dc)))]
    return float(np.mean(values))


def random_codes(n, bits, rng):
    return np.where(rng.standard_normal((n, bits)) >= 0, 1.0, -1.0)


# ---- ties averaged: the exact expectation over every order of tied items ----------------
def test_hand_computed_tie_group():
    # Four items at distance 0, two relevant: the 6 placements of the relevant pair give
    # AP 1, 5/6, 3/4, 7/12, 1/2, 5/12; their mean is 49/72.
    qc, dc = np.ones((1, 4)), np.ones((4, 4))
    assert mean_average_precision(qc, dc, [1], [0, 1, 0, 1]) == pytest.approx(49 / 72, abs=1e-15)
    assert mean_average_precision(qc, dc, [1], [1, 1, 0, 0]) == pytest.approx(49 / 72, abs=1e-15)
    assert mean_average_precision(qc, dc, [1], [1, 1, 0, 0], ties="database_order") == 1.0
    assert precision_at_k(qc, dc, [1], [0, 1, 0, 1], 2) == pytest.approx(0.5)
    # A relevant item alone at distance 0, then a group of 3 at distance 4 holding one relevant
    # item: AP = (1 + E[2 / rank of the second]) / 2 with rank 2, 3 or 4 equally likely.
    dc = np.array([[1.0] * 4, [-1.0] * 4, [-1.0] * 4, [-1.0] * 4])
    expected = (1 + (2 / 2 + 2 / 3 + 2 / 4) / 3) / 2
    assert mean_average_precision(qc, dc, [1], [1, 0, 1, 0]) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("topk", [None, 1, 2, 4])
def test_average_equals_the_mean_over_every_order(seed, topk):
    rng = np.random.default_rng(seed)
    qc, dc = random_codes(5, 3, rng), random_codes(6, 3, rng)  # 3 bits: ties everywhere
    ql, dl = rng.integers(0, 3, 5), rng.integers(0, 3, 6)
    expected = over_every_order(reference_map, qc, dc, ql, dl, topk)
    assert mean_average_precision(qc, dc, ql, dl, topk=topk) == pytest.approx(expected, abs=1e-12)
    if topk:
        expected = over_every_order(reference_precision, qc, dc, ql, dl, topk)
        assert precision_at_k(qc, dc, ql, dl, topk) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("topk", [None, 3])
def test_per_query_average_precisions(topk):
    rng = np.random.default_rng(3)
    qc, dc = random_codes(7, 4, rng), random_codes(40, 4, rng)
    ql, dl = rng.integers(0, 3, 7), rng.integers(0, 3, 40)
    aps = average_precisions(qc, dc, ql, dl, topk=topk, ties="database_order")
    np.testing.assert_allclose(aps, reference_aps(qc, dc, ql, dl, topk), atol=1e-12)
    tied = average_precisions(qc, dc, ql, dl, topk=topk)
    assert tied.shape == (7,) and tied.dtype == np.float64
    assert float(tied.mean()) == mean_average_precision(qc, dc, ql, dl, topk=topk)
    # One query alone: its term, whatever the other queries are.
    assert average_precisions(qc[2:3], dc, ql[2:3], dl, topk=topk)[0] == pytest.approx(tied[2], abs=1e-15)
    with pytest.raises(ValueError, match="ties"):
        average_precisions(qc, dc, ql, dl, ties="random")


def test_average_equals_database_order_without_ties():
    # Database item i differs from the query in i bits: every distance is distinct.
    bits = 10
    qc = np.ones((3, bits))
    dc = np.array([[-1.0] * i + [1.0] * (bits - i) for i in range(bits + 1)])
    ql, dl = [0, 1, 2], np.random.default_rng(0).integers(0, 3, bits + 1)
    for topk in (None, 1, 4, 11):
        assert mean_average_precision(qc, dc, ql, dl, topk=topk) == pytest.approx(
            mean_average_precision(qc, dc, ql, dl, topk=topk, ties="database_order"), abs=1e-15)
        assert precision_at_k(qc, dc, ql, dl, topk or 3) == pytest.approx(
            precision_at_k(qc, dc, ql, dl, topk or 3, ties="database_order"), abs=1e-15)


@pytest.mark.parametrize("topk", [None, 7, 100])
def test_average_does_not_depend_on_database_order(topk):
    rng = np.random.default_rng(2)
    qc, dc = random_codes(50, 12, rng), random_codes(300, 12, rng)
    ql, dl = rng.integers(0, 10, 50), rng.integers(0, 10, 300)
    by_class = np.argsort(dl, kind="stable")  # the CUB layout: database sorted by class
    values = [mean_average_precision(qc, dc[p], ql, dl[p], topk=topk)
              for p in (by_class, by_class[::-1], rng.permutation(300))]
    assert max(values) - min(values) < 1e-12
    rule = [mean_average_precision(qc, dc[p], ql, dl[p], topk=topk, ties="database_order") for p in (by_class, by_class[::-1])]
    assert abs(rule[0] - rule[1]) > 1e-3  # the database-order rule does depend on it


def test_large_tie_groups_at_a_cut():
    # 12-bit codes, 2,000 items: the cut at 100 falls inside groups of hundreds.
    rng = np.random.default_rng(4)
    qc, dc = random_codes(30, 12, rng), np.repeat(random_codes(20, 12, rng), 100, axis=0)
    ql, dl = rng.integers(0, 4, 30), rng.integers(0, 4, 2000)
    shuffled = [mean_average_precision(qc, dc[p], ql, dl[p], topk=100, ties="database_order")
                for p in (rng.permutation(2000) for _ in range(300))]
    ours = mean_average_precision(qc, dc, ql, dl, topk=100)
    assert ours == pytest.approx(np.mean(shuffled), abs=4 * np.std(shuffled) / np.sqrt(300) + 1e-9)


# ---- ties by database order: the rule of published code ---------------------------------
@pytest.mark.parametrize("bits", [4, 12, 32])
@pytest.mark.parametrize("topk", [None, 1, 7, 50])
def test_database_order_equals_reference_with_ties(bits, topk):
    rng = np.random.default_rng(bits)
    # Few bits -> many ties; a label absent from the database -> queries with no relevant item.
    qc, dc = random_codes(40, bits, rng), random_codes(60, bits, rng)
    ql, dl = rng.integers(0, 6, 40), rng.integers(0, 5, 60)
    assert (ql == 5).any()
    ours = mean_average_precision(qc, dc, ql, dl, topk=topk, ties="database_order")
    assert ours == pytest.approx(reference_map(qc, dc, ql, dl, topk), abs=1e-12)


def test_database_order_tie_break():
    qc, dc = np.ones((1, 4)), np.ones((4, 4))
    assert mean_average_precision(qc, dc, [1], [0, 1, 0, 1], ties="database_order") == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert precision_at_k(qc, dc, [1], [0, 1, 0, 1], 1, ties="database_order") == 0.0


def test_database_order_int64_key_path():
    # 3840 bits x 3125 items: keys beyond float32's exact integers take the int64 path.
    rng = np.random.default_rng(3)
    qc, dc = random_codes(10, 64, rng), random_codes(3125, 64, rng)
    qc, dc = np.repeat(qc, 60, axis=1), np.repeat(dc, 60, axis=1)
    assert 2 * qc.shape[1] * len(dc) >= 2**24
    ql, dl = rng.integers(0, 3, 10), rng.integers(0, 3, len(dc))
    ours = mean_average_precision(qc, dc, ql, dl, ties="database_order")
    assert ours == pytest.approx(reference_map(qc, dc, ql, dl), abs=1e-12)


# ---- everything else ----------------------------------------------------------------------
def test_multi_hot_labels_and_torch_inputs():
    rng = np.random.default_rng(1)
    qc, dc = random_codes(5, 3, rng), random_codes(6, 3, rng)
    ql, dl = rng.integers(0, 2, (5, 4)), rng.integers(0, 2, (6, 4))
    args = (torch.tensor(qc), torch.tensor(dc), torch.tensor(ql), torch.tensor(dl))
    assert mean_average_precision(*args) == pytest.approx(over_every_order(reference_map, qc, dc, ql, dl), abs=1e-12)
    assert mean_average_precision(*args, ties="database_order") == pytest.approx(reference_map(qc, dc, ql, dl), abs=1e-12)


def test_distance_counts():
    qc = np.array([[1.0, 1, 1, 1], [-1.0, -1, 1, 1]])
    dc = np.array([[1.0, 1, 1, 1], [1.0, 1, 1, -1], [-1.0, -1, -1, -1]])
    counts = distance_counts(qc, dc, [0, 1], [0, 1, 1])
    assert counts.retrieved.tolist() == [[1, 1, 0, 0, 1], [0, 0, 2, 1, 0]]
    assert counts.relevant.tolist() == [[1, 0, 0, 0, 0], [0, 0, 1, 1, 0]]


def test_precision_within_radius_and_pr_curve_against_reference():
    rng = np.random.default_rng(7)
    qc, dc = random_codes(25, 6, rng), random_codes(40, 6, rng)
    ql, dl = rng.integers(0, 4, 25), rng.integers(0, 4, 40)
    dist, _ = reference_ranking(qc, dc)
    rel = relevant(ql, dl)
    for r in (0, 1, 2):
        vals = []
        for i in range(25):
            inside = dist[i] <= r
            vals.append(rel[i, inside].sum() / inside.sum() if inside.any() else 0.0)
        assert precision_within_radius(qc, dc, ql, dl, r) == pytest.approx(np.mean(vals), abs=1e-12)
    torch.testing.assert_close(hamming_distance(qc, dc), torch.tensor(dist, dtype=torch.int32))
    curve = pr_curve(qc, dc, ql, dl)
    for r in range(7):
        inside = dist <= r
        p = [rel[i, inside[i]].sum() / inside[i].sum() if inside[i].any() else 0.0 for i in range(25)]
        c = [rel[i, inside[i]].sum() / rel[i].sum() if rel[i].any() else 0.0 for i in range(25)]
        assert curve.precision[r] == pytest.approx(np.mean(p), abs=1e-12)
        assert curve.recall[r] == pytest.approx(np.mean(c), abs=1e-12)
    assert curve.retrieved[-1] == 40 and len(curve.to_rows()) == 7


def test_empty_radius_counts_as_zero():
    qc = np.array([[1.0, 1, 1, 1]])
    dc = -np.ones((3, 4))
    assert precision_within_radius(qc, dc, [0], [0, 0, 0], radius=2) == 0.0


def test_report_holds_both_rules_and_chunking_changes_nothing(monkeypatch):
    rng = np.random.default_rng(5)
    qc, dc = random_codes(33, 8, rng), random_codes(20, 8, rng)
    ql, dl = rng.integers(0, 3, 33), rng.integers(0, 3, 20)
    full, curve = retrieval_report(qc, dc, ql, dl, topks=(5,))
    assert set(full) == {"map", "map_db_order", "map@5", "p@5", "p@r2"}
    assert full["map"] == pytest.approx(mean_average_precision(qc, dc, ql, dl), abs=1e-15)
    assert full["map_db_order"] == pytest.approx(reference_map(qc, dc, ql, dl), abs=1e-12)
    assert full["p@r2"] == curve.precision[2]
    monkeypatch.setattr(metrics, "QUERY_CHUNK", 4)
    monkeypatch.setattr(metrics, "HISTOGRAM_CHUNK", 50)  # 2 queries per chunk
    assert retrieval_report(qc, dc, ql, dl, topks=(5,))[0] == pytest.approx(full, abs=1e-12)


@pytest.mark.parametrize("bits", [12, 300])
def test_counts_are_exact_on_every_path(monkeypatch, bits):
    """bfloat16 products with int16 keys, float32 products with int32 keys (over 256 bits, or
    without native bfloat16), and chunks of any size give the same counts as a float64 reference."""
    from gdf_pyg.utils import codes

    rng = np.random.default_rng(bits)
    qc, dc = random_codes(40, bits, rng), random_codes(70, bits, rng)
    ql, dl = rng.integers(0, 5, 40), rng.integers(0, 5, 70)
    dist, _ = reference_ranking(qc, dc)
    expected = np.stack([np.bincount(row.astype(int), minlength=bits + 1) for row in dist])
    expected_rel = np.stack([np.bincount(row[rel].astype(int), minlength=bits + 1)
                             for row, rel in zip(dist, relevant(ql, dl))])
    for bf16 in (True, False):
        for chunk in (1 << 21, 64):
            monkeypatch.setattr(codes, "_BF16", bf16)
            monkeypatch.setattr(metrics, "HISTOGRAM_CHUNK", chunk)
            counts = distance_counts(qc, dc, ql, dl)
            assert np.array_equal(counts.retrieved.numpy(), expected)
            assert np.array_equal(counts.relevant.numpy(), expected_rel)


def test_bad_inputs():
    qc, dc = np.ones((2, 4)), np.ones((3, 4))
    with pytest.raises(ValueError, match="query codes have 4 bits, database codes 5"):
        mean_average_precision(qc, np.ones((3, 5)), [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="db_labels must have 3 rows"):
        mean_average_precision(qc, dc, [0, 1], [0, 1])
    with pytest.raises(ValueError, match="topk must be a positive integer"):
        mean_average_precision(qc, dc, [0, 1], [0, 1, 2], topk=0)
    with pytest.raises(ValueError, match=r"query_codes must hold binary codes in \{-1, \+1\}; entry \(0, 0\) is nan"):
        mean_average_precision(np.full((2, 4), np.nan), dc, [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match=r"db_codes .* entry \(1, 2\) is 0.3.*gdf_pyg.binarize"):
        mean_average_precision(qc, np.array([[1.0] * 4, [1, 1, 0.3, 1], [1.0] * 4]), [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match=r"db_labels\[1\] is -1: labelled metrics need class ids >= 0"):
        mean_average_precision(qc, dc, [0, 1], [0, -1, 2])
    with pytest.raises(ValueError, match="ties must be one of"):
        mean_average_precision(qc, dc, [0, 1], [0, 1, 2], ties="random")
    with pytest.raises(ValueError, match="database is empty"):
        mean_average_precision(qc, np.ones((0, 4)), [0, 1], np.zeros(0, dtype=int))


def test_score_map_against_a_hand_ranking():
    from gdf_pyg.retrieval.metrics import score_mean_average_precision

    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.1, 0.7]])
    ql, bl = torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1])
    # query 0 ranks 0 (rel), 2 (rel), 3, 1 -> AP 1; query 1 ranks 1 (rel), 3 (rel), 0, 2 -> AP 1
    assert score_mean_average_precision(scores, ql, bl) == 1.0
    # query 0 ranks 0 (rel), 2 (not), 3, 1 with relevant 0 and 1: (1/1 + 2/4) / 2
    assert score_mean_average_precision(scores[:1], torch.tensor([0]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert score_mean_average_precision(scores[:1], torch.tensor([5]), bl) == 0.0  # nothing relevant: AP 0
