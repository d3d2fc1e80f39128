"""Benchmark 3: the retrieval engine.

(a) mAP@all computation time of ``gdf_pyg.retrieval.metrics.mean_average_precision`` against a
straightforward per-query reference (float64 distances, one query at a time) at CUB size
(5,794 queries x 5,994 database) and at 50,000 x 50,000, for both tie rules (ties averaged, the
default, and database order), with the values compared; the reference runs on 1,000 queries and
its time is scaled to all of them.
(b) Top-100 Hamming search throughput over 1,000,000 codes of 64 bits: our packed popcount
search, ``HammingIndex(engine="faiss")`` (exact, ties by database order) and raw FAISS ``IndexBinaryFlat``,
and a float matmul of +-1 codes followed by ``topk``.
"""
from __future__ import annotations

import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from gdf_pyg.retrieval.index import HammingIndex, pack_codes
from gdf_pyg.retrieval.metrics import mean_average_precision
from gdf_pyg.utils.optional import has_faiss

from .common import base_parser, barh_plot, best_of, command_line, device_label, markdown_table, resolve, write_results


def reference_map(qc: np.ndarray, dc: np.ndarray, ql: np.ndarray, dl: np.ndarray, ties: str) -> float:
    """Per query, float64 Hamming distances. ``database_order``: a stable sort and the cumulative
    precision at each relevant item. ``average``: walking the distinct distances in order, a tie
    group of n items with r relevant, after N items with R relevant, adds the expected precision
    sum over the orders of the group, r/n * sum_i (R + 1 + (i - 1)(r - 1)/(n - 1)) / (N + i)."""
    k = qc.shape[1]
    dc64 = dc.astype(np.float64)
    aps = []
    for i in range(len(qc)):
        dist = 0.5 * (k - dc64 @ qc[i].astype(np.float64))
        rel = dl == ql[i]
        total = int(rel.sum())
        if total == 0:
            aps.append(0.0)
            continue
        if ties == "database_order":
            rel = rel[np.argsort(dist, kind="stable")]
            hits = np.cumsum(rel)
            aps.append(float((hits[rel] / (np.flatnonzero(rel) + 1)).sum() / total))
            continue
        ap, before, rel_before = 0.0, 0, 0
        for d in np.unique(dist):
            group = dist == d
            n, r = int(group.sum()), int(rel[group].sum())
            if r:
                pos = np.arange(1, n + 1, dtype=np.float64)
                extra = (pos - 1) * (r - 1) / (n - 1) if n > 1 else np.zeros(1)
                ap += r / n * float(((rel_before + 1 + extra) / (before + pos)).sum())
            before, rel_before = before + n, rel_before + r
        aps.append(ap / total)
    return float(np.mean(aps))


def codes(n: int, protos: np.ndarray, rng: np.random.Generator) -> tuple:
    """Class-correlated codes, so rankings are not uniform noise: a class prototype with 20% flips."""
    labels = rng.integers(0, len(protos), n)
    bits = protos.shape[1]
    flips = np.where(rng.random((n, bits)) < 0.2, -1.0, 1.0)
    return (protos[labels] * flips).astype(np.float32), labels


def map_timing(nq: int, nd: int, bits: int, ref_queries: int, rng: np.random.Generator) -> List[Dict[str, object]]:
    """Both tie rules: ours (best of 3) against the per-query float64 reference of the same rule."""
    protos = np.where(rng.standard_normal((200, bits)) >= 0, 1.0, -1.0)
    qc, ql = codes(nq, protos, rng)
    dc, dl = codes(nd, protos, rng)
    m = min(ref_queries, nq)
    rows = []
    for ties in ("average", "database_order"):
        ours_s, ours = best_of(lambda: mean_average_precision(qc, dc, ql, dl, ties=ties), 3)
        t = time.perf_counter()
        ref_sub = reference_map(qc[:m], dc, ql[:m], dl, ties)
        ref_s = (time.perf_counter() - t) * nq / m
        ours_sub = mean_average_precision(qc[:m], dc, ql[:m], dl, ties=ties)
        rows.append({"ties": ties, "queries": nq, "database": nd, "bits": bits, "ours s": ours_s, "reference s": ref_s,
                     "reference measured on": f"{m} queries" + ("" if m == nq else " (scaled)"),
                     "speed-up": ref_s / ours_s, "max |ours - reference|": abs(ours_sub - ref_sub), "mAP": ours})
    return rows


def search_timing(n_db: int, n_q: int, bits: int, k: int, rng: np.random.Generator,
                  device: torch.device) -> List[Dict[str, object]]:
    db = np.where(rng.standard_normal((n_db, bits)) >= 0, 1, -1).astype(np.int8)
    q = np.where(rng.standard_normal((n_q, bits)) >= 0, 1, -1).astype(np.int8)
    packed_db, packed_q = pack_codes(db), pack_codes(q)
    rows = []
    results = {}

    def record(name: str, fn, repeats: int = 3) -> None:
        sec, results[name] = best_of(fn, repeats)
        rows.append({"engine": name, "database": n_db, "queries": n_q, "bits": bits, "k": k, "seconds": sec,
                     "queries/s": n_q / sec})

    numpy_index = HammingIndex(bits, "numpy")
    numpy_index.add(packed_db)
    numpy_index.search(packed_q[:2], k)
    record("ours: packed popcount (numpy)", lambda: numpy_index.search(packed_q, k), repeats=1)
    if has_faiss():
        import faiss

        flat = HammingIndex(bits, "faiss")
        flat.add(packed_db)
        flat.search(packed_q[:2], k)
        record("ours: HammingIndex(engine='faiss')", lambda: flat.search(packed_q, k))
        raw = faiss.IndexBinaryFlat(bits)
        raw.add(packed_db)
        raw.search(packed_q[:2], k)
        record("FAISS IndexBinaryFlat (raw)", lambda: raw.search(packed_q, k))
    db_t = torch.from_numpy(db).to(device, torch.float32)
    q_t = torch.from_numpy(q).to(device, torch.float32)

    def matmul_topk():
        out = []
        for s in range(0, n_q, 64):
            sim = q_t[s:s + 64] @ db_t.t()
            out.append(sim.topk(k, dim=1).indices)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return torch.cat(out)

    matmul_topk()
    record(f"float matmul + topk ({device.type})", matmul_topk)
    # Exact engines must agree with each other.
    ref_d, ref_i = results["ours: packed popcount (numpy)"]
    for row in rows:
        name = row["engine"]
        if name.startswith("ours: HammingIndex"):
            d, i = results[name]
            row["same as ours"] = "yes" if np.array_equal(d, ref_d) and np.array_equal(i, ref_i) else "NO"
        elif name.startswith("FAISS") and "raw" in name:
            d, i = results[name]
            same_d = np.array_equal(d, ref_d)
            row["same as ours"] = "NO" if not same_d else "yes" if np.array_equal(i, ref_i) else "distances only"
        elif name.startswith("float"):
            row["same as ours"] = "ties arbitrary"
        else:
            row["same as ours"] = "-"
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser(__doc__, "retrieval_engine")
    args = parser.parse_args(argv)
    device = resolve(args.device)
    rng = np.random.default_rng(0)
    if args.quick:
        map_rows = map_timing(300, 400, 48, 300, rng)
        search_rows = search_timing(20000, 20, 64, 100, rng, device)
    else:
        map_rows = map_timing(5794, 5994, 48, 1000, rng) + map_timing(50000, 50000, 48, 1000, rng)
        search_rows = search_timing(1_000_000, 1000, 64, 100, rng, device)
    label = device_label(device)
    body = (f"Device: {label}.\n\n## mAP@all computation\n\n"
            + markdown_table(map_rows, ["ties", "queries", "database", "bits", "ours s", "reference s", "reference measured on",
                                        "speed-up", "max |ours - reference|", "mAP"])
            + "\n\n## Top-k Hamming search\n\n"
            + markdown_table(search_rows, ["engine", "database", "queries", "bits", "k", "seconds", "queries/s",
                                           "same as ours"]))
    name = "retrieval_engine" + ("_quick" if args.quick else "")
    md = write_results(args.results, name, "Retrieval engine", body, map_rows + search_rows,
                       command_line(argv, "retrieval_engine"))
    barh_plot([r["engine"] for r in search_rows], [r["queries/s"] for r in search_rows],
              f"queries/s, top-{search_rows[0]['k']} over {search_rows[0]['database']:,} codes",
              args.results / f"{name}.png", label, log=True)
    print(body)
    print(f"\nwritten: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
