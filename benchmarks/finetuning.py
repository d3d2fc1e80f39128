"""Benchmark 10: does training the backbone pay, against the frozen-backbone model?

Per seed, the cpu preset with its backbone frozen (features cached, one cache per data set for
every seed) and recipes that train the whole network on augmented photos (random resized crops
and flips). Two frozen models are references: the cpu preset as it ships (its 48-bit codes keep
the backbone's similarities), against which the finetune preset is measured, and the cpu preset
with class codes at every length (the head the finetune preset and the exploratory recipes
train), from which the "from frozen" recipes start. The recipes:

- "from frozen": start each code length from the class-code frozen run's model (``train.init_from``, a
  model per code length, 12 and 48 bits), learning rate 1e-4 for backbone and head;
- "end to end": the cpu preset trained with its backbone from the ImageNet weights, every code
  length a head of one shared encoder, the head at the preset's learning rate and the backbone
  at ``optim.backbone_lr``;
- "finetune preset, <control>": the ablation's controls (``benchmarks.ablation``: global pooling,
  pooling + MLP, no edges) trained as the finetune preset, their gaps measured against it.

Each run picks its epoch on the validation split; reported are the validation mAP that chose
it and the test mAP@all (ties averaged), mean +/- sd over seeds, with each recipe's gap on test
to its reference (the frozen cpu preset for the finetune preset; the class-code frozen model for
the other recipes; the finetune preset for a control) with its standard error and whether it
exceeds 2 standard errors, and the wall time of a run. A recipe's reference is run with it.
Choose a recipe by its validation columns, never by the test ones.

Runs go to ``--jobs`` parallel processes (on a GPU they share the card; "from frozen" runs
start when their seed's frozen run is done). Every finished run is appended to
``<results>/finetuning_<dataset>_runs.jsonl`` as it ends, so a stopped benchmark keeps what it
finished, and the table is written from that file. ``--quick`` runs every recipe for two
epochs on the built-in synthetic set, for the tests.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import base_parser, command_line, markdown_table, slug, write_results
from .settings import (BITS, CLASS_CODES, CONTROLS, DATASETS, LITE0, QUICK_DATASET, SHARED, dataset_overrides, difference,
                       sample_sd)


FROZEN = "frozen backbone (cpu preset)"
CLASS_FROZEN = "frozen backbone, class codes at every length"


@dataclass(frozen=True)
class Recipe:
    changes: Tuple[str, ...]  # to the cpu preset
    from_frozen: bool = False  # starts from the same seed's class-code frozen run (train.init_from)
    bits: Tuple[int, ...] = BITS
    reference: Optional[str] = CLASS_FROZEN  # the recipe its gap is measured against
    # class codes at every length, as the recipes that train the backbone were measured (the cpu
    # preset's 48-bit codes that keep the backbone's similarities learn from a frozen backbone)
    class_codes: bool = True

    @property
    def overrides(self) -> Tuple[str, ...]:
        return (*(CLASS_CODES if self.class_codes else ()), *self.changes)

    @property
    def frozen(self) -> bool:
        return "train.frozen_backbone=false" not in self.changes


FINETUNE = "end to end, 3 stages frozen, 20 epochs, backbone lr 3e-4 (finetune preset)"
_FROM_FROZEN = ("train.frozen_backbone=false", "train.shared_encoder=false", "optim.lr=1e-4",
                "optim.backbone_lr=1e-4", "optim.batch_size=32", "optim.warmup_epochs=0", "train.eval_every=1")
_END_TO_END = ("train.frozen_backbone=false", "optim.epochs=20", "train.eval_every=2")
RECIPES: Dict[str, Recipe] = {
    FROZEN: Recipe((), reference=None, class_codes=False),
    CLASS_FROZEN: Recipe((), reference=FROZEN),
    "from frozen, 2 epochs (0.4.0's recipe)": Recipe((*_FROM_FROZEN, "optim.epochs=2"), True, (12, 48)),
    "from frozen, 10 epochs, EMA 0.998": Recipe((*_FROM_FROZEN, "optim.epochs=10", "optim.ema_decay=0.998"),
                                                True, (12, 48)),
    "end to end, 8 epochs, backbone lr 1e-4": Recipe((*_END_TO_END, "optim.epochs=8", "optim.backbone_lr=1e-4")),
    "end to end, 20 epochs, backbone lr 1e-4": Recipe((*_END_TO_END, "optim.backbone_lr=1e-4")),
    "end to end, 20 epochs, backbone lr 3e-4": Recipe((*_END_TO_END, "optim.backbone_lr=3e-4")),
    # The first 3 of Lite0's 5 stages frozen: about 1.6x the images/s on the CPU.
    "end to end, 3 stages frozen, 15 epochs, backbone lr 3e-4": Recipe(
        (*_END_TO_END, "train.frozen_stages=3", "optim.epochs=15", "train.eval_every=3", "optim.backbone_lr=3e-4")),
    "end to end, 3 stages frozen, 15 epochs, backbone lr 1e-3": Recipe(
        (*_END_TO_END, "train.frozen_stages=3", "optim.epochs=15", "train.eval_every=3", "optim.backbone_lr=1e-3")),
    # The finetune preset (tests/test_benchmarks.py holds them equal): 3e-4 led 1e-3 on cars98's
    # validation split at every code length, and the 15-epoch runs were still gaining at the end.
    FINETUNE: Recipe(("train.frozen_stages=3", "train.frozen_backbone=false", "optim.epochs=20",
                      "optim.backbone_lr=3e-4", "train.eval_every=4"), reference=FROZEN),
}
# The ablation's controls fine-tuned (benchmarks.ablation runs them frozen), measured against the finetune preset.
RECIPES.update({f"finetune preset, {name}": Recipe((*RECIPES[FINETUNE].changes, *control), reference=FINETUNE)
                for name, control in CONTROLS.items()})


def run_one(overrides: List[str], out: str, threads: int, verbose: bool) -> Dict[str, Any]:
    """One training run (in a worker process): per code length the test mAP, the validation mAP
    that selected the epoch and that epoch; the wall time; or the error."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"%(asctime)s {Path(out).parent.name}/{Path(out).name}: %(message)s")
    from gdf_pyg.training.config import TrainConfig
    from gdf_pyg.training.run import train

    t0 = time.perf_counter()
    try:
        results = train(TrainConfig.load(preset="cpu", overrides=overrides), out)["results"]
    except Exception:  # reported in the table's file; the other runs go on
        return {"error": traceback.format_exc(limit=3)}
    row: Dict[str, Any] = {"seconds": time.perf_counter() - t0}
    for b, r in results.items():
        row[b] = {"map": r["metrics"]["map"], "top1": r["metrics"].get("top1_accuracy"), "val_map": r["val_map"],
                  "best_epoch": r["best_epoch"],
                  "train_images_per_s": r["train_images_per_s"], "train_data_wait": r["train_data_wait"]}
    return row


def read_runs(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def summarise(records: List[Dict[str, Any]], seeds: Sequence[int]) -> List[Dict[str, Any]]:
    """One row per recipe: validation and test mAP, mean ± sd over the seeds that finished."""
    rows = []
    for name, recipe in RECIPES.items():
        done = {r["seed"]: r for r in records if r["recipe"] == name and r["seed"] in seeds and "error" not in r}
        if not done:
            continue
        row: Dict[str, Any] = {"recipe": name, "seeds": len(done), "s / run": statistics.mean(
            r["seconds"] for r in done.values())}
        for key, column in (("train_images_per_s", "train images/s"), ("train_data_wait", "data wait")):
            # runs recorded before these were kept lack them
            values = [r[str(recipe.bits[0])].get(key) for r in done.values()]
            row[column] = statistics.mean(values) if None not in values else ""
        for b in recipe.bits:
            for key, column in (("val_map", f"val {b}"), ("map", f"{b} bits"), ("top1", f"top-1 {b}")):
                values = [r[str(b)].get(key) for r in done.values()]
                if None in values:  # runs recorded before the top-1 accuracy was reported lack it
                    row[column] = ""
                    continue
                row[f"_{column}"] = values
                row[column] = f"{statistics.mean(values):.4f}" + (f" ± {sample_sd(values):.4f}" if len(values) > 1 else "")
        rows.append(row)
    by_name = {r["recipe"]: r for r in rows}
    for row in rows:
        reference = by_name.get(RECIPES[row["recipe"]].reference)
        if reference is None or row is reference:
            continue
        for b in RECIPES[row["recipe"]].bits:
            a, f = row[f"_{b} bits"], reference[f"_{b} bits"]
            gap, se = difference(a, f)
            if min(len(a), len(f)) < 2:  # no standard error from one seed
                row[f"{b} bits"] += f" ({gap:+.4f})"
            else:
                row[f"{b} bits"] += f" ({gap:+.4f} ± {se:.4f}{', beyond 2 se' if abs(gap) > 2 * se else ''})"
    return rows


def with_references(names: Sequence[str]) -> List[str]:
    """``names`` and the recipes they need: each one's reference (and its reference's), and the
    class-code frozen model that "from frozen" recipes start from; the frozen models first."""
    needed: List[str] = []
    todo = list(names)
    while todo:
        name = todo.pop(0)
        if name in needed:
            continue
        needed.append(name)
        recipe = RECIPES[name]
        todo += [n for n in (recipe.reference, CLASS_FROZEN if recipe.from_frozen else None) if n is not None]
    return sorted(needed, key=lambda n: (not RECIPES[n].frozen, list(RECIPES).index(n)))


def run_all(dataset: str, names: List[str], seeds: List[int], done: set, overrides, folder, args, runs_file: Path,
            threads: int) -> List[Dict[str, Any]]:
    """Runs every recipe of ``names`` (:func:`with_references`) for every seed (but the pairs in
    ``done``) in ``args.jobs`` processes: the frozen runs first, each "from frozen" run once its
    seed's class-code frozen model exists. Each finished run is appended to ``runs_file`` and
    printed; returns this call's records."""
    # CUDA needs fresh interpreters in the workers.
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"))
    pending: Dict[Future, Tuple[str, int]] = {}

    def submit(name: str, seed: int) -> None:
        if (name, seed) not in done:
            pending[pool.submit(run_one, overrides(name, seed), str(folder(name, seed)), threads,
                                args.verbose)] = (name, seed)

    def after_frozen(seed: int) -> None:
        for name in names:
            if RECIPES[name].from_frozen:
                submit(name, seed)

    for name in names:
        if not RECIPES[name].from_frozen:
            for seed in seeds:
                submit(name, seed)
    for seed in seeds:
        if (CLASS_FROZEN, seed) in done:
            after_frozen(seed)
    records: List[Dict[str, Any]] = []
    while pending:
        finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in finished:
            name, seed = pending.pop(future)
            record = {"dataset": dataset, "recipe": name, "seed": seed, **future.result()}
            records.append(record)
            with runs_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"done: {name}, seed {seed}: " + (record["error"].strip().splitlines()[-1] if "error" in record else
                  ", ".join(f"{b} bits {record[str(b)]['map']:.4f} (val {record[str(b)]['val_map']:.4f})"
                            for b in RECIPES[name].bits) + f", {record['seconds']:.0f} s"), flush=True)
            if name == CLASS_FROZEN and "error" not in record:
                done.add((CLASS_FROZEN, seed))
                after_frozen(seed)
    pool.shutdown()
    return records


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "finetuning")
    p.add_argument("--dataset", default="flowers102", choices=list(DATASETS))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), metavar="RECIPE",
                   help=f"recipes to run, with the references they are measured against (default: all): {list(RECIPES)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (processes)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (0: the cores shared among the runs and their data-loading workers)")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes per run (data.num_workers)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast where the backbone trains (train.amp)")
    p.add_argument("--data-root", type=Path, default=SHARED / "data", help="folder holding flowers102/ and birds525/")
    p.add_argument("--weights", type=Path, default=LITE0, help="Lite0's ImageNet weights (safetensors)")
    p.add_argument("--runs", type=Path, default=Path("runs/finetuning"), help="folder for the run folders")
    p.add_argument("--table-only", action="store_true", help="no runs: the table from the runs file as it is")
    p.add_argument("--verbose", action="store_true", help="log every epoch of every run (loss, images/s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    dataset = "synthetic" if args.quick else args.dataset
    seeds = list(range(2 if args.quick else args.seeds))
    if args.quick:
        base = list(QUICK_DATASET)
    else:
        root = args.data_root / args.dataset
        if not args.table_only and (not root.is_dir() or not args.weights.is_file()):
            raise SystemExit(f"the photographs and weights are needed; missing: {root if not root.is_dir() else args.weights}")
        base = [*dataset_overrides(args.dataset, root), f"model.backbone.weights_file={args.weights}"]
    base += [f"train.device={args.device}", f"data.num_workers={args.workers}"]
    names = with_references(args.recipes)
    stem = "finetuning_quick" if args.quick else f"finetuning_{dataset}"
    runs_file = args.results / f"{stem}_runs.jsonl"
    args.results.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // (args.jobs * (1 + args.workers)))

    def overrides(name: str, seed: int) -> List[str]:
        recipe = RECIPES[name]
        extra = ["train.amp=true"] if args.amp and not recipe.frozen else []
        if recipe.frozen:  # every seed's frozen runs encode the photos once
            extra.append(f"train.cache_dir={args.runs / dataset / 'cache'}")
        start = [f"train.init_from={folder(CLASS_FROZEN, seed)}"] if recipe.from_frozen else []
        quick = ["optim.epochs=2", "optim.warmup_epochs=0"] if args.quick else []
        return [*base, *recipe.overrides, *start, *extra, *quick, f"train.seed={seed}",
                f"train.bits=[{','.join(map(str, recipe.bits))}]"]

    def folder(name: str, seed: int) -> Path:
        return args.runs / dataset / f"s{seed}" / ("frozen" if name == CLASS_FROZEN else slug(name))

    # Runs in the runs file (of an earlier call) are not run again; the table counts them.
    done = {(r["recipe"], r["seed"]) for r in read_runs(runs_file) if "error" not in r}
    records = [] if args.table_only else run_all(dataset, names, seeds, done, overrides, folder, args, runs_file, threads)
    # Earlier runs of this dataset (e.g. recipes run another time) count too; the newest run of a
    # recipe and seed wins.
    newest = {(r["recipe"], r["seed"]): r for r in read_runs(runs_file) if "error" not in r}
    rows = summarise(list(newest.values()), seeds)
    columns = ["recipe", "seeds", *[f"val {b}" for b in BITS], *[f"{b} bits" for b in BITS],
               *[f"top-1 {b}" for b in (BITS[0], BITS[-1])], "s / run",
               "train images/s", "data wait"]
    body = (f"{dataset}; device {args.device}{', bf16 autocast where the backbone trains' if args.amp else ''}; "
            f"{args.jobs} runs at a time (the wall times of parallel runs overlap). val K: validation mAP of the epoch "
            "each run chose; K bits: test mAP@all (ties averaged); mean ± sd over seeds; (gap to the recipe's "
            "reference: the frozen cpu preset for the finetune preset and the class-code frozen model, the class-code "
            "frozen model for the other recipes, the finetune preset for a control), "
            "with its standard error and whether it exceeds 2 standard errors (where both sides have 2 seeds or more); top-1 K: test accuracy of the class "
            "prediction of the K-bit model (with posterior codes it should nearly agree with their mAP); train images/s and data wait (the fraction of a training epoch spent waiting for "
            "the next batch) of the first code length's training.\n\n" + markdown_table(rows, columns))
    md = write_results(args.results, stem, "Fine-tuning against the frozen backbone", body, rows, command_line(argv, "finetuning"))
    print(body)
    print(f"\nwritten: {md}")
    failed = [f"{r['recipe']}, seed {r['seed']}" for r in records if "error" in r]
    if failed:
        print("failed: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
