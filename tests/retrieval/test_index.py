from __future__ import annotations

import numpy as np
import pytest

from gdf_pyg.retrieval.index import HammingIndex, SavedIndex, pack_codes, unpack_codes
from gdf_pyg.utils.optional import has_faiss

EXACT = ["numpy", pytest.param("faiss", marks=pytest.mark.skipif(not has_faiss(), reason="faiss-cpu is not installed"))]


def brute_force(q, db, k):
    """Float Hamming distances, stable sort: ties by database order."""
    dist = 0.5 * (q.shape[1] - q @ db.T)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1).astype(np.int32), order


def codes(n, bits, rng):
    return np.where(rng.standard_normal((n, bits)) >= 0, 1.0, -1.0)


@pytest.mark.parametrize("bits", [4, 12, 64, 100])
def test_pack_round_trip(bits):
    c = codes(7, bits, np.random.default_rng(bits))
    packed = pack_codes(c)
    assert packed.shape == (7, -(-bits // 8)) and packed.dtype == np.uint8
    assert np.array_equal(unpack_codes(packed, bits), c)


@pytest.mark.parametrize("engine", EXACT)
@pytest.mark.parametrize("bits", [12, 32, 64, 72])
@pytest.mark.parametrize("k", [1, 10, 300])
def test_exact_search_equals_brute_force(engine, bits, k):
    rng = np.random.default_rng(bits + k)
    db, q = codes(250, bits, rng), codes(30, bits, rng)
    db[100:110] = db[5]  # duplicates: ties that must be broken by database order
    q[0] = db[5]
    index = HammingIndex(bits, engine)
    index.add(pack_codes(db[:120]))
    index.add(pack_codes(db[120:]))  # ids continue across adds
    dist, ids = index.search(pack_codes(q), k)
    ref_d, ref_i = brute_force(q, db, min(k, 250))
    assert np.array_equal(dist, ref_d) and np.array_equal(ids, ref_i)
    assert list(ids[0, :11]) == [5, *range(100, 110)][: min(k, 11)]


@pytest.mark.skipif(not has_faiss(), reason="faiss-cpu is not installed")
def test_hnsw_is_close_to_exact():
    rng = np.random.default_rng(0)
    db, q = codes(3000, 32, rng), codes(40, 32, rng)
    index = HammingIndex(32, "faiss_hnsw")
    index.add(pack_codes(db))
    dist, ids = index.search(pack_codes(q), 10)
    ref_d, _ = brute_force(q, db, 10)
    assert np.array_equal(dist, 0.5 * (32 - q[:, None, :] @ db[ids].transpose(0, 2, 1))[:, 0].astype(np.int32))
    assert (dist[:, 0] == ref_d[:, 0]).mean() > 0.9  # approximate: the nearest is almost always found


def test_saved_index_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    c = codes(5, 12, rng)
    saved = SavedIndex(12, pack_codes(c), np.array([0, 1, -1, 1, 0]), [f"img{i}.jpg" for i in range(5)],
                       ["a", "b"], {"checkpoint": "x.pt"})
    saved.save(tmp_path / "idx")
    back = SavedIndex.load(tmp_path / "idx")
    assert back.bits == 12 and back.paths == saved.paths and back.classes == ["a", "b"]
    assert np.array_equal(back.packed, saved.packed) and back.meta["checkpoint"] == "x.pt"
    d, i = back.index("numpy").search(pack_codes(c[:1]), 1)
    assert i[0, 0] == 0 and d[0, 0] == 0
    (tmp_path / "idx" / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="lacks labels.npy"):
        SavedIndex.load(tmp_path / "idx")
    with pytest.raises(ValueError, match=r"shape \(N, 2\) for 12 bits"):
        HammingIndex(12, "numpy").add(np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="unknown engine"):
        HammingIndex(12, "annoy")
    with pytest.raises(ValueError, match="index is empty"):
        HammingIndex(12, "numpy").search(np.zeros((1, 2), dtype=np.uint8), 3)


def test_pack_codes_refuses_relaxed_codes():
    with pytest.raises(ValueError, match=r"entry \(0, 1\) is 0.2.*gdf_pyg.binarize"):
        pack_codes(np.array([[1.0, 0.2, -1.0]]))
    assert np.array_equal(pack_codes(np.array([[1, -1, -1, 1]])), np.array([[0b10010000]], dtype=np.uint8))


@pytest.mark.parametrize("engine", EXACT)
@pytest.mark.parametrize("bits", [8, 12])
def test_exact_search_with_huge_tie_groups(engine, bits):
    # 5,000 codes of 8 or 12 bits: hundreds of codes at every distance, so the k-th place always
    # falls inside a tie group; the smallest ids of that group must be the ones returned.
    rng = np.random.default_rng(bits)
    db, q = codes(5000, bits, rng), codes(50, bits, rng)
    index = HammingIndex(bits, engine)
    index.add(pack_codes(db))
    for k in (7, 100, 1000):
        dist, ids = index.search(pack_codes(q), k)
        ref_d, ref_i = brute_force(q, db, k)
        assert np.array_equal(dist, ref_d) and np.array_equal(ids, ref_i)
        assert (ref_d[:, -1][:, None] == brute_force(q, db, 5000)[0]).sum(1).min() > k // 7  # ties cross the cut
