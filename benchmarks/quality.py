"""Benchmark 8: retrieval quality of the cpu preset before and after its defaults changed.

The cpu preset as it was in version 0.1 (learning rate 0.002, quantization weight 0.1, no label
smoothing, a linear hash layer), in 0.2.0 (a linear hash layer, no dropout before it), with the
hidden layer but no dropout, in 0.3.0 (dropout 0.2), in 0.4.0 (dropout 0.4; until 0.6.0 every version
hashed the features, not a class posterior) and as it is, trained through the library on
the cached features of the frozen ImageNet EfficientNet-Lite0, every code length at its best
validation epoch, for several seeds; test mAP@all (ties averaged), mean +/- sd, and the wall time of a run.
``--shared`` trains the code lengths as heads of one encoder (about 4x cheaper on a CPU);
without it each code length is a separate model. Rows of configurations not run again are kept
from the results file, so one configuration can be added or rerun at a time.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .common import base_parser, command_line, markdown_table, write_results
from .settings import BITS, DATASETS, LITE0, run_variant, summarise


CONFIGS: Dict[str, List[str]] = {
    "cpu preset before": ["optim.lr=0.002", "loss.quantization=0.1", "loss.label_smoothing=0.0", "model.hash_hidden=0",
                          "model.hash_dropout=0.0", "model.hash_input=features"],
    "cpu preset 0.2.0": ["model.hash_hidden=0", "model.hash_dropout=0.0", "model.hash_input=features"],
    "hidden layer, no dropout": ["model.hash_dropout=0.0", "model.hash_input=features"],
    "cpu preset 0.3.0": ["model.hash_dropout=0.2", "model.hash_input=features"],
    "cpu preset 0.4.0": ["model.hash_input=features"],
    "cpu preset now": [],
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "quality")
    p.add_argument("--dataset", default="flowers102", choices=list(DATASETS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--shared", action="store_true", help="code lengths as heads of one encoder")
    p.add_argument("--bits", type=int, nargs="+", default=list(BITS), help="code lengths")
    p.add_argument("--cache", type=Path, default=Path("runs/cache"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = [*DATASETS[args.dataset], f"model.backbone.weights_file={LITE0}"]
    name = f"quality_{args.dataset}" + ("_shared" if args.shared else "")
    # Rows of the configurations not rerun now are kept from the results file, in CONFIGS order.
    earlier = args.results / f"{name}.json"
    kept = {r["variant"]: r for r in (json.loads(earlier.read_text()) if earlier.is_file() else [])
            if r["variant"] not in args.configs and all(f"{b} bits" in r for b in args.bits)}
    for config in args.configs:
        runs = [run_variant(base, CONFIGS[config], seed, args.epochs, args.cache, shared=args.shared, bits=args.bits)
                for seed in range(args.seeds)]
        kept[config] = summarise(config, runs, args.bits)
        print(f"done: {config}: " + ", ".join(f"{b} bits {kept[config][f'{b} bits']}" for b in args.bits), flush=True)
    rows = sorted(kept.values(), key=lambda r: list(CONFIGS).index(r["variant"]) if r["variant"] in CONFIGS else -1)
    how = "heads of one shared encoder" if args.shared else "a separate model per code length"
    body = (f"{args.dataset}; frozen Lite0 features; {args.epochs} epochs, {how}, each code length at its best "
            f"validation epoch; test mAP@all (ties averaged), mean ± sd over {args.seeds} seeds; s / run: wall time "
            "of one run (all code lengths, feature cache reused).\n\n"
            + markdown_table(rows, ["variant", *[f"{b} bits" for b in args.bits], "s / run"]))
    md = write_results(args.results, name, "Retrieval quality of the cpu preset", body, rows,
                       command_line(argv, "quality"))
    print(body)
    print(f"\nwritten: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
