"""Benchmark 5: the paper's setting (``--preset paper``) trained for real.

ResNet-50 at 448 px, 32 attention-part nodes, dynamic 3-NN graph, fine-tuned backbone, mixed
precision (bfloat16 autocast, on the CPU too), through the library's trainer:

- default: a few epochs on the first classes of ``../shared/data/flowers102``; reports images/s,
  peak memory and the loss of every epoch, and whether the loss fell;
- ``--cub-synthetic``: one epoch of a whole run (training, validation, final evaluation) on a
  synthetic set of CUB's size (200 classes, 5,994 training and 5,794 test images); reports the
  epoch's images/s, the run's wall time, peak memory and mAP.

ResNet-50 weights come from ``--weights`` when given (a timm state dict or .safetensors file),
else the backbone starts from random initialisation; the output says which.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from gdf_pyg.engine.checkpoint import load_checkpoint
from gdf_pyg.training.config import TrainConfig
from gdf_pyg.training.run import train

from .common import (
    barh_plot, base_parser, command_line, device_label, markdown_table, peak_memory_mb, resolve, slug, write_results,
)
from .settings import SHARED


FLOWERS = SHARED / "data" / "flowers102"
# (image size, classes, epochs, global batch)
QUICK = (224, 2, 3, 8)
FULL = {"cpu": (448, 4, 3, 8), "cuda": (448, 16, 3, 32)}
# CUB-sized synthetic set: (classes, training and test images per class, image size, batch)
CUB_SIZED = (200, 30, 29, 448, 32)
CUB_QUICK = (6, 4, 2, 64, 8)


def paper_config(data: Path, size: int, classes: int, epochs: int, batch: int, device: str,
                 weights: Optional[Path]) -> TrainConfig:
    backbone = [f"model.backbone.weights_file={weights}"] if weights else ["model.backbone.pretrained=false"]
    return TrainConfig.load(preset="paper", overrides=[
        "data.dataset=folder", f"data.root={data}", f"data.max_classes={classes}", "data.query_fraction=0.2",
        "data.val_fraction=0.0", f"model.img_size={size}", *backbone, f"optim.epochs={epochs}",
        f"optim.batch_size={batch}", "optim.warmup_epochs=0", "train.bits=[48]", f"train.device={device}",
    ])


def train_epochs(cfg: TrainConfig, device: torch.device) -> Tuple[List[Dict[str, float]], float]:
    """A run of ``cfg`` through the library (``gdf_pyg.training.train``): the history of its epochs
    and the peak memory growth while it ran."""
    with tempfile.TemporaryDirectory() as out:
        peak = peak_memory_mb(lambda: train(cfg, Path(out)), device)
        history = load_checkpoint(Path(out) / "bits48" / "last.pt")["history"]
    for h in history:
        print(f"epoch {int(h['epoch'])}: loss {h['loss']:.4f}, {h['images_per_s']:.1f} images/s", flush=True)
    return history, peak


def cub_synthetic(args, device: torch.device, init: str, argv: Optional[Sequence[str]]) -> None:
    """One epoch of a whole run on a synthetic set of CUB's size."""
    classes, per_train, per_test, size, batch = CUB_QUICK if args.quick else CUB_SIZED
    backbone = [f"model.backbone.weights_file={args.weights}"] if args.weights else ["model.backbone.pretrained=false"]
    cfg = TrainConfig.load(preset="paper", overrides=[
        "data.dataset=synthetic", f"data.synthetic.num_classes={classes}", f"data.synthetic.train_per_class={per_train}",
        f"data.synthetic.test_per_class={per_test}", f"data.num_workers={args.workers}", f"model.img_size={size}",
        *backbone, "optim.epochs=1", f"optim.batch_size={batch}", "optim.warmup_epochs=0", "train.bits=[48]",
        f"train.device={args.device}", "model.nodes.num_parts=32" if not args.quick else "model.nodes.num_parts=4",
    ])
    print(f"paper setting, one epoch on a CUB-sized synthetic set ({classes} classes, {classes * per_train} training "
          f"and {classes * per_test} test images at {size} px), {device_label(device)}; backbone: {init}", flush=True)
    result: Dict[str, object] = {}
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        peak = peak_memory_mb(lambda: result.update(train(cfg, Path(out))["results"]["48"]), device)
        wall = time.perf_counter() - t0
    row = {"images": classes * per_train, "queries": result["queries"], "train images/s": result["train_images_per_s"],
           "run wall s": wall, "peak memory (MB)": peak, "mAP@all": result["metrics"]["map"]}
    name = "paper_cub_synthetic" + ("_quick" if args.quick else "") + ("" if device.type == "cpu" else f"_{slug(device_label(device))}")
    body = (f"{device_label(device)}; preset paper (ResNet-50, {cfg.model.nodes.num_parts} attention parts, dynamic 3-NN graph, fine-tuned, "
            f"bfloat16 autocast) at {size} px, global batch {batch}, 48 bits, {args.workers} data workers; one epoch "
            f"of training, then validation and the final evaluation (float32 codes of all images); backbone from "
            f"{init}. Synthetic images are rendered on the fly by the data workers.\n\n" + markdown_table([row], list(row)))
    md = write_results(args.results, name, "The paper's setting: one epoch on a CUB-sized synthetic set", body,
                       [{**row, "device": device_label(device), "init": init}], command_line(argv, "paper_setting"))
    print(md.read_text())


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = base_parser(__doc__.splitlines()[0], "paper_setting")
    p.add_argument("--data", type=Path, default=FLOWERS, help="image folder, one sub-folder per class")
    p.add_argument("--weights", type=Path, default=None, help="ResNet-50 weights (timm); default: random initialisation")
    p.add_argument("--cub-synthetic", action="store_true", help="one epoch of a whole run on a CUB-sized synthetic set")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes (--cub-synthetic)")
    args = p.parse_args(argv)
    device = resolve(args.device)
    init = f"weights from {args.weights}" if args.weights else "random initialisation (no --weights given)"
    if args.cub_synthetic:
        return cub_synthetic(args, device, init, argv)
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such folder (the shared flowers102 photographs are expected there)")
    size, classes, epochs, batch = QUICK if args.quick else FULL[device.type]
    print(f"paper setting on {device_label(device)}: ResNet-50 at {size} px, {classes} classes of {args.data.name}, "
          f"batch {batch}, bfloat16 autocast; backbone: {init}", flush=True)
    cfg = paper_config(args.data, size, classes, epochs, batch, args.device, args.weights)
    t0 = time.perf_counter()
    history, peak = train_epochs(cfg, device)
    fell = history[-1]["loss"] < history[0]["loss"]
    rows = [{"epoch": int(h["epoch"]), "loss": h["loss"], "classification": h.get("classification", 0.0),
             "images/s": h["images_per_s"], "peak memory (MB)": peak} for h in history]
    name = "paper_setting" + ("_quick" if args.quick else "") + ("" if device.type == "cpu" else f"_{slug(device_label(device))}")
    body = (f"{device_label(device)}; ResNet-50 at {size} px, 32 attention parts, dynamic 3-NN graph, two EdgeConv "
            f"layers, fine-tuned backbone, bfloat16 autocast; {classes} classes of `{args.data.name}` "
            f"({int(history[0]['images'])} training images), global batch {batch}, 48 bits; backbone from {init}. "
            f"Peak memory: growth while the run ran ({'CUDA allocator' if device.type == 'cuda' else 'malloc'}). "
            f"Wall time {time.perf_counter() - t0:.0f} s.\n\n"
            + markdown_table(rows, list(rows[0])) + f"\n\nLoss fell from epoch 1 to {epochs}: **{'yes' if fell else 'no'}** "
            f"({history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}).")
    md = write_results(args.results, name, "The paper's setting on real photographs", body,
                       [{**r, "loss_fell": fell, "device": device_label(device), "init": init} for r in rows],
                       command_line(argv, "paper_setting"))
    barh_plot([f"epoch {r['epoch']}" for r in rows], [r["loss"] for r in rows], "training loss",
              args.results / f"{name}.png", "paper setting: loss per epoch")
    print(md.read_text())


if __name__ == "__main__":
    sys.exit(main())
