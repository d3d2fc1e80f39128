"""Benchmark 6: each stage around the model against its floor, side by side in one run.

- encode: real JPEGs through the index's encoding (read, reduced-scale decode, timm transform,
  backbone, graph head, binarise; ``gdf_pyg.retrieval.search.encode_records``, start-up excluded)
  against the bare backbone's forward on ready tensors at its fastest batch size and memory
  format (searched first); rounds alternate the two and the median ratio is reported, so a
  noisy machine slows both alike.
- search: exact top-100 through ``HammingIndex(engine="faiss")`` against raw FAISS
  ``IndexBinaryFlat.search`` on the same packed codes, rounds alternating, median ratio.
- mAP: ``mean_average_precision`` (ties averaged) against its counting floor, the per-query
  histograms of Hamming distances alone (``distance_counts``).
"""
from __future__ import annotations

import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from gdf_pyg.data.loading import resolve_eval_batch_size
from gdf_pyg.data.records import ImageRecord
from gdf_pyg.models.gdfnet import GDFNet, GDFNetConfig
from gdf_pyg.retrieval.index import HammingIndex, pack_codes
from gdf_pyg.retrieval.metrics import distance_counts, mean_average_precision
from gdf_pyg.retrieval.search import encode_records
from gdf_pyg.training.config import EvalConfig
from gdf_pyg.utils.optional import has_faiss

from .common import barh_plot, base_parser, best_of, command_line, device_label, markdown_table, write_results
from .settings import LITE0, SHARED


FLOWERS = SHARED / "data" / "flowers102"
FULL = {"images": 612, "rounds": 5, "search": (1_000_000, 1000, 64, 100), "map": (5794, 5994, 48)}
QUICK = {"images": 48, "rounds": 2, "search": (20_000, 50, 64, 100), "map": (300, 400, 48)}


def seconds(fn: Callable[[], object], repeats: int = 1) -> float:
    return best_of(fn, repeats)[0]


def fastest_forward(model: GDFNet, size: int, count: int) -> Tuple[int, bool, float]:
    """The backbone's fastest (batch size, channels-last, images/s) on ready tensors: the median
    of two passes over every setting."""
    settings = [(batch, cl) for batch in (1, 4, 8, 16, 32) for cl in (True, False)]
    rates: Dict[Tuple[int, bool], List[float]] = {k: [] for k in settings}
    for _ in range(2):
        for batch, cl in settings:
            rates[(batch, cl)].append(forward_rate(model, size, batch, cl, count))
    (batch, cl), best = max(((k, statistics.median(v)) for k, v in rates.items()), key=lambda kv: kv[1])
    return batch, cl, best


def forward_rate(model: GDFNet, size: int, batch: int, channels_last: bool, count: int) -> float:
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    steps = max(2, count // batch)
    with torch.inference_mode():
        model.backbone.model(x)  # warm-up
        return batch * steps / seconds(lambda: [model.backbone.model(x) for _ in range(steps)])


def encode_stage(images: int, rounds: int) -> List[Dict[str, object]]:
    weights = {"weights_file": str(LITE0)} if LITE0.is_file() else {"pretrained": False}
    model = GDFNet(GDFNetConfig.preset("cpu", [f"backbone.{k}={v}" for k, v in weights.items()])).eval()
    files = sorted(FLOWERS.rglob("*.jpg"))[:images]
    if not files:
        raise SystemExit(f"no JPEGs under {FLOWERS}: the encoding stage needs the shared flowers102 photographs")
    records = [ImageRecord(f, 0) for f in files]
    size = model.config.img_size
    batch = resolve_eval_batch_size(EvalConfig().batch_size, "cpu", size)
    best_batch, best_cl, _ = fastest_forward(model, size, 64)
    floors, pipes = [], []
    for _ in range(rounds):  # alternating, so a machine that speeds up or slows down affects both
        pipes.append(len(files) / seconds(lambda: encode_records(model, records, batch_size=batch)))
        floors.append(forward_rate(model, size, best_batch, best_cl, len(files)))
    ratio = statistics.median(p / f for p, f in zip(pipes, floors))
    return [{"stage": "encode real JPEGs (images/s)", "ours": statistics.median(pipes), "floor": statistics.median(floors),
             "ours / floor": ratio,
             "setting": f"{len(files)} flowers102 JPEGs, Lite0 224 px + GDF head, batch {batch}; floor: bare backbone "
                        f"forward, batch {best_batch}, {'channels-last' if best_cl else 'NCHW'}"}]


def search_stage(n_db: int, n_q: int, bits: int, k: int) -> List[Dict[str, object]]:
    if not has_faiss():
        return []
    import faiss

    rng = np.random.default_rng(0)
    db = pack_codes(np.where(rng.standard_normal((n_db, bits)) >= 0, 1, -1).astype(np.int8))
    q = pack_codes(np.where(rng.standard_normal((n_q, bits)) >= 0, 1, -1).astype(np.int8))
    raw = faiss.IndexBinaryFlat(bits)
    raw.add(db)
    ours = HammingIndex(bits, "faiss")
    ours.add(db)
    ours.search(q[:2], k)  # builds the FAISS index once
    t_raw, t_ours = [], []
    for _ in range(5):  # alternating, as for encoding
        t_raw.append(seconds(lambda: raw.search(q, k)))
        t_ours.append(seconds(lambda: ours.search(q, k)))
    ratio = statistics.median(r / o for r, o in zip(t_raw, t_ours))
    return [{"stage": "exact top-k search (queries/s)", "ours": n_q / statistics.median(t_ours),
             "floor": n_q / statistics.median(t_raw), "ours / floor": ratio,
             "setting": f"{n_db:,} codes of {bits} bits, {n_q} queries, top-{k}, ties by database order; floor: raw "
                        "faiss.IndexBinaryFlat.search"}]


def map_stage(nq: int, nd: int, bits: int) -> List[Dict[str, object]]:
    rng = np.random.default_rng(1)
    protos = np.where(rng.standard_normal((200, bits)) >= 0, 1.0, -1.0)
    ql, dl = rng.integers(0, 200, nq), rng.integers(0, 200, nd)
    flip = lambda n: np.where(rng.random((n, bits)) < 0.2, -1.0, 1.0)  # noqa: E731
    qc, dc = torch.tensor(protos[ql] * flip(nq)), torch.tensor(protos[dl] * flip(nd))
    ql, dl = torch.tensor(ql), torch.tensor(dl)
    t_map = seconds(lambda: mean_average_precision(qc, dc, ql, dl), 5)
    t_counts = seconds(lambda: distance_counts(qc, dc, ql, dl), 5)
    return [{"stage": "mAP@all, ties averaged (seconds)", "ours": t_map, "floor": t_counts, "ours / floor": t_counts / t_map,
             "setting": f"{nq:,} queries x {nd:,} database codes of {bits} bits; floor: the per-distance counts alone"}]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = base_parser(__doc__.splitlines()[0], "pipeline").parse_args(argv)
    sizes = QUICK if args.quick else FULL
    torch.manual_seed(0)
    rows = encode_stage(sizes["images"], sizes["rounds"]) + search_stage(*sizes["search"]) + map_stage(*sizes["map"])
    label = device_label(torch.device("cpu"))
    body = (f"Device: {label}. 'ours / floor' is the speed of our stage as a fraction of its floor's, "
            "measured in the same run (1.0 = at the floor).\n\n"
            + markdown_table(rows, ["stage", "ours", "floor", "ours / floor", "setting"]))
    name = "pipeline" + ("_quick" if args.quick else "")
    md = write_results(args.results, name, "Stages against their floors", body, rows, command_line(argv, "pipeline"))
    barh_plot([r["stage"] for r in rows], [r["ours / floor"] for r in rows], "speed as a fraction of the floor",
              args.results / f"{name}.png", label)
    print(body)
    print(f"\nwritten: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
