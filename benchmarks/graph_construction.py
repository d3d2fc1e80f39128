"""Benchmark 1: cost of graph constructions against the arithmetic floor.

For each case (nodes per image, images, feature dims) it times every kNN backend (dense,
torch-cluster, FAISS when installed) and the other constructions (grid, radius, fully
connected, dynamic), each next to one batched matmul of the same features measured in the
same run, records peak memory, and checks that the kNN backends return the same graph.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from gdf_pyg.nn.graph import fully_connected_graph, grid_graph, knn_graph, radius_graph, select_backend
from gdf_pyg.nn.nodes import grid_positions
from gdf_pyg.utils.optional import has_faiss, has_torch_cluster

from .common import (
    base_parser, command_line, device_label, markdown_table, peak_memory_mb, pyplot, resolve, slug,
    time_call, write_results,
)

# (nodes per image, images, dims): 7x7 / 14x14 / 28x28 maps, batch 8..64, dims 64..2048.
FULL_CASES = [
    (49, 8, 64), (49, 64, 64), (49, 64, 2048),
    (196, 8, 256), (196, 32, 2048), (196, 64, 64),
    (784, 8, 64), (784, 8, 2048), (784, 64, 256),
    # kNN over 2-D positions of large maps, where the KD-tree of torch-cluster wins ("auto" picks it).
    (1024, 8, 2), (4096, 8, 2),
]
QUICK_CASES = [(49, 4, 32), (196, 2, 64)]
K = 8
HIDDEN = 256  # width of the features a dynamic graph is rebuilt from


def same_graph(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, k: int) -> str:
    """"yes" when both kNN graphs hold the same neighbour sets; "yes, up to near-ties (m nodes)"
    when they differ only where float32 rounding reorders neighbours whose exact (float64)
    distances agree to 1e-5 relative; "NO" otherwise."""
    n = x.size(0)
    na, nb = a[0].view(n, k).sort(1).values, b[0].view(n, k).sort(1).values
    differ = (na != nb).any(1).nonzero().flatten()
    if differ.numel() == 0:
        return "yes"
    x64 = x.double()
    centre = differ.unsqueeze(1)
    da = (x64[na[differ]] - x64[centre]).norm(dim=-1).sort(1).values
    db = (x64[nb[differ]] - x64[centre]).norm(dim=-1).sort(1).values
    if torch.allclose(da, db, rtol=1e-5, atol=0):
        return f"yes, up to near-ties ({differ.numel()} nodes)"
    return "NO"


def run_case(n: int, b: int, d: int, device: torch.device, repeats: int) -> List[Dict[str, object]]:
    side = int(round(n ** 0.5))
    g = torch.Generator().manual_seed(n * 1000 + b * 10 + d)
    x = torch.randn(b * n, d, generator=g).to(device)
    hidden = torch.randn(b * n, HIDDEN, generator=g).to(device)
    batch = torch.arange(b, device=device).repeat_interleave(n)
    pos = grid_positions(side, side, device).repeat(b, 1)
    xb, hb = x.view(b, n, d), hidden.view(b, n, HIDDEN)
    floor = time_call(lambda: torch.bmm(xb, xb.transpose(1, 2)), device, repeats)
    floor_hidden = time_call(lambda: torch.bmm(hb, hb.transpose(1, 2)), device, repeats)

    ops = {"knn dense": lambda: knn_graph(x, K, batch, backend="dense"),
           f"knn auto (= {select_backend(d, n, device)})": lambda: knn_graph(x, K, batch, backend="auto")}
    if has_torch_cluster():
        ops["knn torch_cluster"] = lambda: knn_graph(x, K, batch, backend="torch_cluster")
    if has_faiss() and device.type == "cpu":
        ops["knn faiss"] = lambda: knn_graph(x, K, batch, backend="faiss")
    ops["grid (8-neighbour)"] = lambda: grid_graph(side, side, connectivity=8, batch_size=b, device=device)
    ops["radius (positions, r=0.15)"] = lambda: radius_graph(pos, 0.15, batch, max_num_neighbors=32)
    ops["fully connected"] = lambda: fully_connected_graph(b * n, batch)
    ops[f"dynamic (rebuild on {HIDDEN}-d)"] = lambda: knn_graph(hidden, K, batch, backend="dense")

    reference = knn_graph(x, K, batch, backend="dense")
    rows = []
    for name, fn in ops.items():
        ms = time_call(fn, device, repeats)
        mem = peak_memory_mb(fn, device)
        base = floor_hidden if name.startswith("dynamic") else floor
        agree = ""
        if name.startswith("knn"):
            agree = same_graph(reference, fn(), x, K)
        rows.append({"nodes": n, "images": b, "dims": d, "construction": name, "ms": ms,
                     "floor ms": base, "x floor": ms / base, "peak MB": mem, "same graph as dense": agree})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser(__doc__, "graph_construction")
    args = parser.parse_args(argv)
    device = resolve(args.device)
    label = device_label(device)
    cases = QUICK_CASES if args.quick else FULL_CASES
    rows: List[Dict[str, object]] = []
    for n, b, d in cases:
        rows += run_case(n, b, d, device, repeats=2 if args.quick else 5)
        print(f"done: {n} nodes x {b} images x {d} dims", flush=True)
    name = "graph_construction" + ("_quick" if args.quick else "") + ("" if device.type == "cpu" else "_" + slug(label))
    columns = ["nodes", "images", "dims", "construction", "ms", "floor ms", "x floor", "peak MB", "same graph as dense"]
    rows = [r for r in rows if not (r["dims"] <= 3 and not str(r["construction"]).startswith("knn"))]
    body = (f"Device: {label}. k = {K}. Floor: one `torch.bmm` of the same features (the dynamic rebuild: of "
            f"its {HIDDEN}-d features), timed in the same run. Peak MB: "
            + ("CUDA allocator peak." if device.type == "cuda" else "growth of malloc'd bytes, sampled every 0.2 ms.")
            + "\n\n" + markdown_table(rows, columns))
    md = write_results(args.results, name, "Graph construction cost", body, rows, command_line(argv, "graph_construction"))
    plot(rows, args.results / f"{name}.png", label)
    print(body)
    print(f"\nwritten: {md}")
    return 0


def plot(rows: List[Dict[str, object]], path: Path, label: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    cases = sorted({(r["nodes"], r["images"], r["dims"]) for r in rows})
    names = list(dict.fromkeys(r["construction"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cases)), 4.2), dpi=110)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        ys = [next((r["x floor"] for r in rows if (r["nodes"], r["images"], r["dims"]) == c and r["construction"] == name),
                   float("nan")) for c in cases]
        ax.bar([i + j * width for i in range(len(cases))], ys, width, label=name)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([f"{n}n\n{b}x{d}d" for n, b, d in cases], fontsize=7)
    ax.set_ylabel("time / batched-matmul floor")
    ax.set_title(f"graph construction, k={K}: {label}", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
