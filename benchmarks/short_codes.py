"""Benchmark 8: where short codes lose mAP, on the validation split of a trained run.

For each code length of a run (by default the cpu preset trained on flowers102 for 30 epochs,
trained here if the run folder does not hold it yet): validation mAP@all (ties averaged), how
often the code's own classifier names the wrong class, the average precision of the queries it
gets right and wrong, how the lost mAP splits among queries with AP < 0.2, 0.2 to 0.8 and >= 0.8,
how many distinct codes each class occupies in the database and how far apart the classes' codes
lie. The test split is not used.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from gdf_pyg.data.loading import resolve_eval_batch_size
from gdf_pyg.engine.inference import load_model
from gdf_pyg.retrieval.evaluation import validation_sets
from gdf_pyg.retrieval.metrics import average_precisions
from gdf_pyg.training import train
from gdf_pyg.training.config import TrainConfig
from gdf_pyg.training.run import cached_features
from gdf_pyg.training.run_data import build_run_data, run_evaluator

from .common import barh_plot, base_parser, command_line, markdown_table, resolve, write_results
from .settings import DATASETS, LITE0, QUICK_DATASET

COLUMNS = ["bits", "val mAP", "code classifier wrong", "AP right", "AP wrong", "lost: AP < 0.2", "lost: 0.2-0.8",
           "lost: AP >= 0.8", "codes per class", "codes of 2+ classes", "class code gap"]


def class_code_gaps(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each class, the Hamming distance from its most frequent code to the nearest other
    class's most frequent code."""
    classes = labels.unique()
    modes = []
    for c in classes.tolist():
        values, counts = codes[labels == c].unique(dim=0, return_counts=True)
        modes.append(values[counts.argmax()])
    modes = torch.stack(modes)
    dist = (modes.size(1) - modes @ modes.T) / 2
    dist.fill_diagonal_(float("inf"))
    return dist.min(1).values


def diagnose(run: Path, cache: Path, device: torch.device) -> List[Dict[str, object]]:
    """One row per code length of the finished run in ``run``."""
    cfg = TrainConfig.load(run / "config.yaml")
    models = {bits: load_model(run / f"bits{bits}" / "best.pt", device)[0] for bits in cfg.train.bits}
    probe = models[cfg.train.bits[0]]  # every code length has the same backbone: one dataset and cache
    data = build_run_data(cfg, probe.image_config, run)
    if not len(data.val_pos):
        raise SystemExit(f"{run}: the run has no validation split (data.val_fraction=0)")
    features = cached_features(cfg, data, probe.backbone, device, cache) if cfg.train.frozen_backbone else None
    batch = resolve_eval_batch_size(cfg.eval.batch_size, device, cfg.model.img_size)
    evaluator = run_evaluator(data, device, batch, features=features)
    rows = []
    for bits, model in models.items():
        q, db, ql, dbl = validation_sets(evaluator.codes(model, "train"), data.train_labels, data.val_pos, data.fit_pos)
        ap = average_precisions(q, db, ql, dbl)
        with torch.no_grad():
            right = (model.head.classifier(q.to(device)).argmax(1).cpu() == ql).numpy()
        lost = 1.0 - ap
        buckets = {"lost: AP < 0.2": ap < 0.2, "lost: 0.2-0.8": (ap >= 0.2) & (ap < 0.8), "lost: AP >= 0.8": ap >= 0.8}
        owners: Dict[bytes, set] = {}
        for code, label in zip((db > 0).numpy(), dbl.tolist()):
            owners.setdefault(np.packbits(code).tobytes(), set()).add(label)
        per_class = sum(len(o) for o in owners.values()) / len(set(dbl.tolist()))
        gaps = class_code_gaps(db, dbl)
        rows.append({
            "bits": bits, "val mAP": float(ap.mean()), "code classifier wrong": f"{int((~right).sum())} / {len(ap)}",
            "AP right": float(ap[right].mean()) if right.any() else float("nan"),
            "AP wrong": float(ap[~right].mean()) if (~right).any() else float("nan"),
            **{k: f"{int(m.sum())} queries, {lost[m].sum() / max(lost.sum(), 1e-12):.0%}" for k, m in buckets.items()},
            "codes per class": per_class, "codes of 2+ classes": sum(len(o) > 1 for o in owners.values()),
            "class code gap": f"{int(gaps.min())} / {float(gaps.median()):g} / {int(gaps.max())}",
        })
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "short_codes")
    p.add_argument("--dataset", default="flowers102", choices=list(DATASETS))
    p.add_argument("--run", type=Path, help="a finished run (default: runs/short_codes_<dataset>_s<seed>, trained "
                                            "with the cpu preset if missing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--cache", type=Path, default=Path("runs/cache"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = resolve(args.device)
    if args.quick:
        run, overrides, epochs = args.results / "short_codes_quick_run", QUICK_DATASET, 2
    else:
        run, epochs = args.run or Path(f"runs/short_codes_{args.dataset}_s{args.seed}"), args.epochs
        overrides = [*DATASETS[args.dataset], f"model.backbone.weights_file={LITE0}"]
    if not (run / "metrics.json").is_file():
        if args.run is not None:
            raise SystemExit(f"--run {run}: not a finished run (no metrics.json)")
        cfg = TrainConfig.load(preset="cpu", overrides=[*overrides, f"train.seed={args.seed}", f"optim.epochs={epochs}",
                                                        "train.eval_every=2", f"train.device={args.device}"])
        train(cfg, run, cache_dir=args.cache)
    rows = diagnose(run, args.cache, device)
    name = "short_codes_quick" if args.quick else f"short_codes_{args.dataset}_s{args.seed}"
    text = (f"Run: `{run}`. Validation queries against the rest of the training split, each code length's "
            "selected model. 'code classifier wrong': queries whose binary code the model's own classifier "
            "assigns to another class; 'lost': the queries in each AP range and their share of the mAP lost "
            "(the sum of 1 - AP); 'codes per class': distinct codes a class occupies in the database; 'class code "
            "gap': bits from a class's most frequent database code to the nearest other class's (min / median / "
            "max over classes).\n\n"
            + markdown_table(rows, COLUMNS))
    md = write_results(args.results, name, "Where short codes lose mAP", text, rows, command_line(argv, "short_codes"))
    barh_plot([f"{r['bits']} bits" for r in rows], [r["val mAP"] for r in rows], "validation mAP@all",
              args.results / f"{name}.png", "validation mAP per code length")
    print(text)
    print(f"\nwritten: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
