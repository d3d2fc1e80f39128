"""Benchmark 2: does the graph help, and is it the edges or the extra capacity?

Every variant trains through the library (``gdf_pyg.training.train``) on the cached features of
a frozen ImageNet EfficientNet-Lite0, all four code lengths as heads of one shared encoder
(``train.shared_encoder``), each code length at the epoch of its best validation mAP (a split
of the training data, never the test set), for several seeds. Reported: test mAP@all (ties
averaged) mean +/- sample sd over seeds; a difference from GDF-Net larger than twice its
standard error is marked, and each difference is reported with its standard error. Two controls separate the graph from its capacity:

- "no edges": the same nodes, layers and readout, each node its own only neighbour;
- "pooling + MLP": global pooling followed by layers of the graph's width and depth.

Every variant has the cpu preset's head as it stands (class codes; since version 0.9 the 48-bit
codes also keep the backbone's similarities). The same controls with the backbone fine-tuned
are recipes of ``benchmarks.finetuning`` ("finetune preset, <control>"), beside the finetune preset.

Datasets: ``../shared/data/flowers102`` (102 species x 40 photos), ``birds525`` (525 x 5) and
``cars98`` (98 car models, 21 to 34 photos each); ``--quick`` runs two variants on the built-in
synthetic set for the tests.
"""
from __future__ import annotations

import logging
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .common import base_parser, command_line, markdown_table, pyplot, write_results
from .settings import BITS, CONTROLS, DATASETS, LITE0, QUICK_DATASET, SHARED, difference, run_variant, sample_sd, summarise


REFERENCE = "GDF-Net: dynamic 8-NN, EdgeConv"
VARIANTS: Dict[str, List[str]] = {
    **CONTROLS,
    REFERENCE: [],
    "static 8-NN (feature space)": ["model.graph.method=knn"],
    "grid, 8-neighbour": ["model.graph.method=grid"],
}
QUICK_VARIANTS = ["global pooling", REFERENCE]


def mark_differences(rows: List[Dict[str, object]]) -> None:
    """Appends each variant's difference from the reference with its standard error, "(+)" or "(-)"
    where it exceeds twice the standard error."""
    ref = next((r for r in rows if r["variant"] == REFERENCE), None)
    if ref is None:
        return
    for row in rows:
        if row is ref:
            continue
        for b in BITS:
            gap, se = difference(row[f"_{b}"], ref[f"_{b}"])
            mark = (" (+)" if gap > 0 else " (-)") if abs(gap) > 2 * se else ""
            row[f"{b} bits"] += f" [{gap:+.4f} ± {se:.4f}]{mark}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "ablation")
    p.add_argument("--cache", type=Path, default=Path("runs/cache"), help="feature cache folder (shared by the runs)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (the epoch is chosen on validation)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--variants", nargs="+", default=[*CONTROLS, REFERENCE], choices=list(VARIANTS), metavar="VARIANT",
                   help=f"variants to run (default: GDF-Net and its controls): {list(VARIANTS)}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    weights = [f"model.backbone.weights_file={LITE0}"] if LITE0.is_file() else ["model.backbone.pretrained=false"]
    if args.quick:
        plans: List[Tuple[str, List[str], List[str]]] = [("synthetic", QUICK_DATASET, QUICK_VARIANTS)]
        seeds, epochs = 2, 2
    else:
        missing = [d for d in args.datasets if not Path(DATASETS[d][1].split("=", 1)[1]).is_dir()]
        if missing or not LITE0.is_file():
            raise SystemExit(f"the shared photographs and weights are needed ({SHARED}); missing: {missing or LITE0}")
        plans = [(d, [*DATASETS[d], *weights], list(args.variants)) for d in args.datasets]
        seeds, epochs = args.seeds, args.epochs
    body, rows_all = [], []
    for dataset, base, names in plans:
        rows = []
        for name in names:
            runs = [run_variant(base, VARIANTS[name], seed, epochs, args.cache) for seed in range(seeds)]
            rows.append(summarise(name, runs))
            print(f"done: {dataset} / {name}: " + ", ".join(f"{b} bits {rows[-1][f'{b} bits']}" for b in BITS), flush=True)
        mark_differences(rows)
        body.append(f"## {dataset}\n\n" + markdown_table(rows, ["variant", *[f"{b} bits" for b in BITS], "s / run"]))
        rows_all += [{"dataset": dataset, **r} for r in rows]
    name = "ablation" + ("_quick" if args.quick else "") + (f"_{args.datasets[0]}" if len(args.datasets) == 1 else "")
    text = (f"Test mAP@all (ties averaged), mean ± sd over {seeds} seeds; {epochs} epochs, each code length at its best "
            "validation epoch; shared encoder, frozen Lite0 features. [difference ± its standard error] from GDF-Net; "
            "(+)/(-): more than 2 standard errors.\n\n" + "\n\n".join(body))
    md = write_results(args.results, name, "Ablation with controls", text, rows_all, command_line(argv, "ablation"))
    plot(rows_all, args.results / f"{name}.png")
    print(text)
    print(f"\nwritten: {md}")
    return 0


def plot(rows: List[Dict[str, object]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), dpi=110, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in (r for r in rows if r["dataset"] == dataset):
            means = [statistics.mean(r[f"_{b}"]) for b in BITS]
            sds = [sample_sd(r[f"_{b}"]) for b in BITS]
            ax.errorbar(BITS, means, yerr=sds, marker="o", capsize=3, label=r["variant"])
        ax.set_title(dataset)
        ax.set_xlabel("bits")
        ax.set_ylabel("test mAP@all")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
