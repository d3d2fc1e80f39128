"""Benchmark: how long ``gdf-pyg serve`` takes to answer, against an index of 1,000,000 codes.

The service of ``gdf-pyg serve`` (the cpu preset's model, 64-bit codes; FAISS) over an index of
1,000,000 random codes, asked through FastAPI's test client: a search by a photo of the
collection (the search alone, with the JSON answer) and by an uploaded JPEG (read, decoded,
encoded by the model, searched), and, apart, the encoding of the upload and the FAISS search.
Median over repeated requests, after one warm-up. ``--quick``: 10,000 codes and a tiny network.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from gdf_pyg.models.gdfnet import GDFNet, GDFNetConfig
from gdf_pyg.retrieval.index import SavedIndex
from gdf_pyg.retrieval.serve import SearchService, create_app

from .common import barh_plot, base_parser, command_line, device_label, markdown_table, write_results
from .settings import LITE0, SHARED

PHOTO = SHARED / "data" / "flowers102"


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def service(items: int, quick: bool, folder: Path) -> SearchService:
    """The service over ``items`` random 64-bit codes, with the cpu preset's model."""
    weights = {"weights_file": str(LITE0)} if LITE0.is_file() and not quick else {"pretrained": False}
    overrides = {"bits": 64, "num_classes": 100, "backbone": {**GDFNetConfig.preset("cpu").backbone.__dict__, **weights}}
    if quick:
        overrides.update(img_size=64, backbone={"name": "test_efficientnet", "pretrained": False},
                         graph={"method": "dynamic", "k": 3}, aggregation={"hidden_channels": 16})
    config = GDFNetConfig.from_dict({**GDFNetConfig.preset("cpu").to_dict(), **overrides})
    model = GDFNet(config).eval()
    rng = np.random.default_rng(0)
    saved = SavedIndex(64, rng.integers(0, 256, (items, 8), dtype=np.uint8), rng.integers(0, 100, items),
                       [str(folder / f"{i}.jpg") for i in range(items)], [f"class {c}" for c in range(100)],
                       {"images": str(folder)})
    return SearchService(saved, model, saved.index("auto"), max_k=100)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from fastapi.testclient import TestClient

    parser = base_parser(__doc__.splitlines()[0], "serve")
    parser.add_argument("--photo", type=Path, default=None, help="the JPEG to upload (default: a flowers102 photo)")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    items, repeats = (10_000, 5) if args.quick else (1_000_000, 30)
    photo = args.photo or next(iter(sorted(PHOTO.rglob("*.jpg"))), None)
    if photo is None:
        raise SystemExit(f"no photo to upload: pass --photo (none found under {PHOTO})")
    data = Path(photo).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        svc = service(items, args.quick, Path(tmp))
        (Path(tmp) / "123.jpg").write_bytes(data)  # the photo searched by its number is on disk
        client = TestClient(create_app(svc))
        packed = svc.saved.packed[123]
        by_id = median_ms(lambda: client.post("/api/search?k=10", data={"id": "123"}).raise_for_status(), repeats)
        by_upload = median_ms(lambda: client.post("/api/search?k=10", files={"image": ("q.jpg", data)})
                              .raise_for_status(), repeats)
        encode = median_ms(lambda: svc.encode_upload(data), repeats)
        search = median_ms(lambda: svc.search(packed, 10), repeats)
    rows: List[Dict[str, object]] = [
        {"request": "POST /api/search, a photo of the collection (search + answer)", "median ms": by_id},
        {"request": "POST /api/search, an uploaded JPEG (read, decode, encode, search, answer)", "median ms": by_upload},
        {"request": "apart: encoding the upload (decode, transform, model)", "median ms": encode},
        {"request": "apart: the FAISS search, top-10", "median ms": search},
    ]
    label = device_label(torch.device("cpu"))
    body = (f"Device: {label}. {items:,} random 64-bit codes in the index (FAISS `IndexBinaryFlat`, exact, ties by "
            f"database order), top 10; the cpu preset's model ({'a tiny network' if args.quick else 'EfficientNet-Lite0, 224 px'}); "
            f"the upload: `{Path(photo).name}` ({len(data):,} bytes); median of {repeats} requests through FastAPI's test "
            "client after one warm-up.\n\n" + markdown_table(rows, ["request", "median ms"]))
    name = "serve" + ("_quick" if args.quick else "")
    md = write_results(args.results, name, "Answering a search", body, rows, command_line(argv, "serve"))
    barh_plot([str(r["request"]).split(" (")[0] for r in rows], [float(r["median ms"]) for r in rows], "median ms",
              args.results / f"{name}.png", f"{items:,} codes", log=True)
    print(body)
    print(f"\nwritten: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
