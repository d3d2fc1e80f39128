"""Benchmark 2: retrieval quality of graph constructions, node types and conv layers.

On cached feature maps of a frozen backbone (computed once per dataset), every variant is
trained for a fixed number of epochs with one shared encoder and a hash head per code length
(see ``gdf_pyg.study``), for several seeds, and evaluated by mAP@all (queries = test split,
database = training split). Datasets: the synthetic fine-grained set (the demo's random
ResNet-10t features) and, when ../shared is present, the BIRDS-525 photographs with the
ImageNet EfficientNet-Lite0.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, command_line, markdown_table, pyplot, write_results  # noqa: E402

from gdf_pyg.models.gdfnet import GDFNet, GDFNetConfig  # noqa: E402
from gdf_pyg.training.config import TrainConfig  # noqa: E402
from gdf_pyg.training.run import cached_features  # noqa: E402
from gdf_pyg.training.run_data import build_run_data  # noqa: E402
from gdf_pyg.training.study import train_code_lengths  # noqa: E402
from gdf_pyg.utils.config_io import apply_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BITS = (12, 24, 32, 48)
BIRD_CLASSES = 200  # the first 200 of the 525 species: 800 database / 200 query images

# name -> overrides of the model config (relative to the dataset's base, a dynamic 8-NN graph
# over spatial nodes with EdgeConv).
VARIANTS: Dict[str, List[str]] = {
    "no graph (global pooling)": ["head=global"],
    "kNN feature space, k=3": ["graph.method=knn", "graph.k=3"],
    "kNN feature space, k=5": ["graph.method=knn", "graph.k=5"],
    "kNN feature space, k=8": ["graph.method=knn", "graph.k=8"],
    "kNN feature space, k=16": ["graph.method=knn", "graph.k=16"],
    "kNN image space, k=8": ["graph.method=spatial_knn", "graph.k=8"],
    "grid, 8-neighbour": ["graph.method=grid", "graph.connectivity=8"],
    "radius 0.25 (image space)": ["graph.method=radius", "graph.radius=0.25"],
    "fully connected": ["graph.method=full"],
    "dynamic kNN, k=8 (EdgeConv)": [],
    "attention parts (32), dynamic kNN": ["nodes.kind=parts", "nodes.num_parts=32"],
    "dynamic kNN, GCN": ["aggregation.conv=gcn"],
    "dynamic kNN, GAT": ["aggregation.conv=gat"],
    "dynamic kNN, SAGE": ["aggregation.conv=sage"],
}
QUICK_VARIANTS = ["no graph (global pooling)", "kNN feature space, k=3", "dynamic kNN, k=8 (EdgeConv)"]
EPOCHS = {"synthetic": 12, "birds525": 8}
HEAD = ["graph.method=dynamic", "graph.k=8", "nodes.kind=spatial", "aggregation.hidden_channels=64",
        "aggregation.conv=edge", "aggregation.readout=mean_max"]


def dataset_configs(quick: bool) -> Dict[str, Tuple[TrainConfig, str]]:
    """Training configs (only their data and backbone are used) and a skip reason (or "")."""
    synth = TrainConfig.load(preset="demo", overrides=(
        ["data.synthetic.num_classes=8", "data.synthetic.train_per_class=8", "data.synthetic.test_per_class=3"]
        if quick else ["data.synthetic.num_classes=16", "data.synthetic.train_per_class=16",
                       "data.synthetic.test_per_class=6"]) + ["data.val_fraction=0"])
    out = {"synthetic": (synth, "")}
    weights = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
    birds = SHARED / "data" / "birds525"
    if not quick:
        if weights.is_file() and birds.is_dir():
            cfg = TrainConfig.load(preset="cpu", overrides=[
                "data.dataset=folder", f"data.root={birds}", "data.val_fraction=0", "data.query_fraction=0.2",
                f"data.max_classes={BIRD_CLASSES}", f"model.backbone.weights_file={weights}"])
            out["birds525"] = (cfg, "")
        else:
            out["birds525"] = (TrainConfig(), f"skipped: {birds} or {weights} not found (../shared is absent)")
    return out


def features_of(cfg: TrainConfig, cache: Path):
    probe = GDFNet(cfg.model)
    data = build_run_data(cfg, probe.image_config)
    feats = cached_features(cfg, data, probe, torch.device("cpu"), cache)
    train, test = feats["train"], feats["test"]
    return train.values, data.train_labels[train.positions], test.values, data.test_labels[test.positions]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: per dataset)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "gdf-pyg" / "features",
                        help="where backbone features are cached")
    args = parser.parse_args(argv)
    names = QUICK_VARIANTS if args.quick else list(VARIANTS)
    seeds = 1 if args.quick else args.seeds
    rows: List[Dict[str, object]] = []
    notes = []
    t_start = time.perf_counter()
    for dataset, (cfg, skip) in dataset_configs(args.quick).items():
        if skip:
            notes.append(f"- {dataset}: {skip}")
            continue
        train_maps, train_labels, test_maps, test_labels = features_of(cfg, args.cache)
        epochs = args.epochs or (2 if args.quick else EPOCHS[dataset])
        base = apply_overrides(cfg.model.to_dict(), HEAD)
        notes.append(f"- {dataset}: backbone {cfg.model.backbone.name} (frozen), feature map "
                     f"{tuple(train_maps.shape[1:])}, {len(train_maps)} database/training images, "
                     f"{len(test_maps)} queries, {int(train_labels.max()) + 1} classes, {epochs} epochs")
        for name in names:
            mcfg = GDFNetConfig.from_dict(apply_overrides(base, VARIANTS[name]))
            runs = [train_code_lengths(mcfg, train_maps, train_labels, test_maps, test_labels, bits=BITS,
                                       epochs=epochs, seed=seed, loss=cfg.loss) for seed in range(seeds)]
            row: Dict[str, object] = {"dataset": dataset, "variant": name}
            for b in BITS:
                vals = [r[f"map@{b}"] for r in runs]
                row[f"{b} bits"] = f"{statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}"
                row[f"_{b}"] = vals
            row["s / seed"] = statistics.mean(r["seconds"] for r in runs)
            rows.append(row)
            print(f"{dataset:10s} {name:38s} " + "  ".join(str(row[f'{b} bits']) for b in BITS), flush=True)
    columns = ["dataset", "variant", *[f"{b} bits" for b in BITS], "s / seed"]
    body = (f"mAP@all, mean ± standard deviation over {seeds} seed(s); one encoder shared by four hash heads "
            "(12/24/32/48 bits), fixed epochs, no model selection. Base: spatial nodes, dynamic 8-NN graph, two "
            "EdgeConv layers (hidden 64), mean‖max readout, fused with global pooling.\n\n" + "\n".join(notes)
            + "\n\n" + markdown_table(rows, columns)
            + f"\n\nTotal time: {time.perf_counter() - t_start:.0f} s.")
    name = "ablation" + ("_quick" if args.quick else "")
    md = write_results(args.results, name, "Retrieval quality of graph constructions", body,
                       [{k: v for k, v in r.items()} for r in rows], command_line(argv, "ablation.py"))
    plot(rows, args.results / f"{name}.png")
    print(body)
    print(f"\nwritten: {md}")
    return 0


def plot(rows: List[Dict[str, object]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 0.32 * len(rows) / len(datasets) + 1.5),
                             dpi=110, squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        sub = [r for r in rows if r["dataset"] == ds]
        for j, b in enumerate(BITS):
            means = [statistics.mean(r[f"_{b}"]) for r in sub]
            errs = [statistics.pstdev(r[f"_{b}"]) for r in sub]
            ax.barh([i + j * 0.2 for i in range(len(sub))], means, 0.2, xerr=errs, label=f"{b} bits")
        ax.set_yticks([i + 0.3 for i in range(len(sub))])
        ax.set_yticklabels([r["variant"] for r in sub], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("mAP@all")
        ax.set_title(ds)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
