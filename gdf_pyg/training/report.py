"""Run reports: metrics as JSON, CSV and a markdown table; precision-recall as CSV and PNG."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

__all__ = ["comparison_table", "metrics_table", "plot_pr_curves", "write_reports"]

METRIC_TITLES = {"map": "mAP@all", "map_db_order": "mAP@all (ties by db order)", "p@r2": "P@r<=2",
                 "top1_accuracy": "top-1 accuracy"}


def _title(key: str) -> str:
    if key in METRIC_TITLES:
        return METRIC_TITLES[key]
    if key.startswith("map@"):
        return "mAP@" + key[4:]
    if key.startswith("p@r"):
        return "P@r<=" + key[3:]
    if key.startswith("p@"):
        return "P@" + key[2:]
    return key


def metrics_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One markdown table, a row per code length, a column per metric."""
    bits = sorted(results, key=int)
    keys = list(results[bits[0]]["metrics"])
    lines = ["| bits | " + " | ".join(_title(k) for k in keys) + " |", "|---:|" + "---:|" * len(keys)]
    for b in bits:
        m = results[b]["metrics"]
        lines.append(f"| {b} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)


def comparison_table(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], metric: str = "map") -> str:
    """Markdown table of one metric: a row per model, a column per code length."""
    names = list(runs)
    bits = sorted({b for r in runs.values() for b in r}, key=int)
    lines = ["| model | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---:|" * len(bits)]
    for name in names:
        cells = [f"{runs[name][b]['metrics'][metric]:.4f}" if b in runs[name] else "-" for b in bits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pr_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: Path, title: str = "") -> Path:
    """Precision against recall over Hamming radius, one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for label, rows in curves.items():
        ax.plot([r["recall"] for r in rows], [r["precision"] for r in rows], marker=".", label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or "precision-recall over Hamming radius")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reports(run_dir: Path, summary: Mapping[str, Any]) -> None:
    """``metrics.json``, ``metrics.csv``, ``report.md``, ``pr_curve.csv``, ``pr_curve.png``."""
    run_dir = Path(run_dir)
    results: Dict[str, Any] = summary["results"]
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    keys = list(next(iter(results.values()))["metrics"])
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["bits", *keys, "best_epoch", "val_map"])
        for b in sorted(results, key=int):
            r = results[b]
            w.writerow([b, *(f"{r['metrics'][k]:.6f}" for k in keys), r.get("best_epoch"), f"{r.get('val_map', 0):.6f}"])
    with (run_dir / "pr_curve.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["bits", "radius", "precision", "recall", "mean_retrieved"])
        for b in sorted(results, key=int):
            for row in results[b]["pr_curve"]:
                w.writerow([b, row["radius"], f"{row['precision']:.6f}", f"{row['recall']:.6f}",
                            f"{row['mean_retrieved']:.3f}"])
    plot_pr_curves({f"{b} bits": results[b]["pr_curve"] for b in sorted(results, key=int)}, run_dir / "pr_curve.png",
                   f"{summary.get('dataset', '')}: precision-recall over Hamming radius")
    skipped: List[str] = list(summary.get("skipped_images", []))
    lines = [
        f"# Retrieval results ({summary.get('dataset', '')}, {summary.get('num_classes', '?')} classes)",
        "",
        "Queries: test split; database: training split. mAP@all, mAP@k and P@k are exact expectations over every "
        "order of items at equal Hamming distance (independent of the database order); 'mAP@all (ties by db order)' "
        "breaks ties by database order, as most published code does.",
        "",
        metrics_table(results),
        "",
        f"Unreadable images skipped: {len(skipped)}" + ("" if not skipped else "\n\n" + "\n".join(f"- {p}" for p in skipped)),
        "",
    ]
    (run_dir / "report.md").write_text("\n".join(lines))
