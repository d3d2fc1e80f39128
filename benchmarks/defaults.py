"""Benchmark 7: choosing the cpu preset's defaults on validation data.

Each candidate (overrides of the cpu preset) trains through the library on the cached
features of the frozen ImageNet EfficientNet-Lite0, all code lengths as heads of one shared
encoder, and reports the **validation** mAP@all (ties averaged) of each code length at its best
epoch: the number defaults are chosen by. The test split is not looked at (``--test`` adds it,
for the record, after the choice). Each run is a round appended to ``results/defaults/ledger.jsonl``
(version, date, command, rows), and ``results/defaults/defaults.md`` is generated from the ledger.
"""
from __future__ import annotations

import datetime
import logging
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import gdf_pyg

from .common import append_ledger, base_parser, command_line, markdown_table
from .settings import BITS, DATASETS, LITE0, train_preset


CANDIDATES: Dict[str, List[str]] = {
    "cpu preset (before)": [],
    "+ hash centers (CSQ)": ["loss.center=1.0"],
    "+ OrthoHash": ["loss.orthohash=1.0"],
    "hash centers, no code classifier": ["loss.center=1.0", "loss.classification=0.0"],
    "OrthoHash, no code classifier": ["loss.orthohash=1.0", "loss.classification=0.0"],
    "+ hash centers, no dropout": ["loss.center=1.0", "model.aggregation.dropout=0.0"],
}


def evaluate(dataset: List[str], overrides: List[str], seed: int, epochs: int, cache: Path, test: bool):
    results, seconds = train_preset([*dataset, f"model.backbone.weights_file={LITE0}", *overrides], seed, epochs, cache)
    row = {f"val {b}": results[str(b)]["val_map"] for b in BITS}
    if test:
        row.update({f"test {b}": results[str(b)]["metrics"]["map"] for b in BITS})
    row["epochs chosen"] = "/".join(str(results[str(b)]["best_epoch"]) for b in BITS)
    row["s"] = seconds
    return row


LEDGER = "ledger.jsonl"


def render(records: List[Dict[str, object]]) -> str:
    """The markdown of every round of the ledger, oldest first: its version, date and command(s),
    then its table (rounds recorded before the ledger keep the text they were written with)."""
    parts = ["# Choosing defaults on validation data\n\nEvery round of `python -m benchmarks.defaults`, oldest "
             "first, generated from `ledger.jsonl` (one record per round: version, date, command, rows). "
             "Validation mAP@all (ties averaged) at each code length's best epoch; the test split is not "
             "looked at to choose.\n"]
    for r in records:
        head = f"## Round {r['round']}: {r['dataset']}, version {r['version']}, {r['date']}"
        if "markdown" in r:
            body = str(r["markdown"])
        else:
            body = (f"Command: `{r['command']}`\n\n{r['description']}\n\n"
                    + markdown_table(r["rows"], list(r["columns"])))
        parts.append(f"{head}\n\n{body}\n")
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "defaults")
    p.add_argument("--dataset", default="flowers102", choices=list(DATASETS))
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), help="names of CANDIDATES, or key=value lists "
                                                                             "joined with commas")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("runs/cache"))
    p.add_argument("--test", action="store_true", help="also report test mAP (after the choice, for the record)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.candidates:
        overrides = CANDIDATES.get(name, [o for o in name.split(",") if o])
        row = {"candidate": name, **evaluate(DATASETS[args.dataset], overrides, args.seed, args.epochs, args.cache,
                                             args.test)}
        row["val mean"] = statistics.mean(row[f"val {b}"] for b in BITS)
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    columns = ["candidate", *[f"val {b}" for b in BITS], "val mean", "epochs chosen", "s"]
    columns += [f"test {b}" for b in BITS] if args.test else []
    description = (f"{args.dataset}, seed {args.seed}, {args.epochs} epochs, shared encoder, frozen Lite0 at the "
                   "preset's size.")
    records = append_ledger(args.results / LEDGER, {
        "dataset": args.dataset, "seed": args.seed, "version": gdf_pyg.__version__, "date": datetime.date.today().isoformat(),
        "command": command_line(argv, "defaults"), "description": description, "columns": columns, "rows": rows})
    md = args.results / "defaults.md"
    md.write_text(render(records))
    print(markdown_table(rows, columns))
    print(f"\nround {records[-1]['round']} appended to {args.results / LEDGER}; written: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
