"""Benchmark: GDF-Net trained at the device's speed, on real JPEG photos.

Everything through the library's own training run (``gdf_pyg.training.train``, what ``gdf-pyg
train`` calls), measured in one process, on a CUDA card or on the CPU:

- the paper preset (fine-tuned backbone, 32 attention parts, dynamic 3-NN, bf16 autocast), the
  cpu preset's head on a fine-tuned backbone and the finetune preset (its first 3 stages kept,
  bf16 on a card): training images/s in the steady state (epochs after
  the first) against the bare backbone's forward + backward + AdamW step from ready tensors at the
  same batch, size and precision; the fraction of the time spent waiting for data; the fraction
  of the run spent validating; on a card, how busy it was (``nvidia-smi`` sampled during the
  steady-state epochs) and whether the steady-state steps pass under
  ``torch.cuda.set_sync_debug_mode("error")``;
- host round trips per training step, counted with ``torch.profiler``
  (:func:`gdf_pyg.utils.profiling.count_host_syncs`) over a short run of each preset;
- the training loader alone (the paper transforms) and the evaluation loader alone, images/s;
- the frozen-feature cache (the cpu preset's first step: the backbone over every photo) against
  the evaluation loader alone.

On a card the backbone is each preset's own at 448 px (ResNet-50 for the paper preset); on the
CPU both run EfficientNet-Lite0 at 224 px (ResNet-50 at 448 px trains at about one image a
second on 2 cores). ``--weights`` gives Lite0 ImageNet weights (else random initialisation:
speed does not depend on the weights).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from gdf_pyg.data.loading import loader_options, resolve_eval_batch_size, resolve_num_workers
from gdf_pyg.data.records import collate_skipping_bad
from gdf_pyg.engine.amp import autocast
from gdf_pyg.engine.checkpoint import load_checkpoint
from gdf_pyg.models.gdfnet import GDFNet
from gdf_pyg.nn.backbone import image_config_of
from gdf_pyg.presets import load_preset_dict
from gdf_pyg.training import train
from gdf_pyg.training.config import TrainConfig
from gdf_pyg.training.run import cached_features
from gdf_pyg.training.run_data import build_run_data
from gdf_pyg.training.trainer import Trainer, model_config_for
from gdf_pyg.utils.profiling import count_host_syncs

from .common import barh_plot, base_parser, command_line, device_label, markdown_table, resolve, slug, write_results
from .settings import LITE0, SHARED


PHOTOS = SHARED / "data" / "flowers102"
# (classes, epochs, batch) of the photos trained on: a card's minutes, the CPU's, the tests' seconds.
SIZES = {"cuda": (25, 4, 32), "cpu": (8, 3, 16), "quick": (3, 2, 8)}


def preset_overrides(preset: str, device: torch.device, photos: Path, classes: int, epochs: int, batch: int,
                     weights: Optional[Path], quick: bool) -> List[str]:
    """The preset trained end to end on the photos: on a card as shipped (448 px), on the CPU with
    Lite0 at 224 px, in the tests with timm's smallest test network at 64 px."""
    out = ["data.dataset=folder", f"data.root={photos}", f"data.max_classes={classes}", "data.query_fraction=0.2",
           "data.val_fraction=0.2", f"optim.epochs={epochs}", f"optim.batch_size={batch}", "optim.warmup_epochs=0",
           "train.bits=[48]", f"train.device={device.type}", "train.frozen_backbone=false", "train.shared_encoder=false",
           f"train.eval_every={epochs}"]
    if quick:
        out += ["model.backbone.name=test_efficientnet", "model.backbone.pretrained=false", "model.img_size=64",
                "model.graph.k=3", "model.nodes.num_parts=4"]
    elif device.type == "cpu" or preset in ("cpu", "finetune"):
        out += ["model.backbone.name=tf_efficientnet_lite0"]
        out += [f"model.backbone.weights_file={weights}"] if weights else ["model.backbone.pretrained=false"]
        out += ["model.img_size=224"] if device.type == "cpu" else ["model.img_size=448"]
    else:
        out += ["model.backbone.pretrained=false"]  # ResNet-50 at 448 px; speed does not depend on the weights
    # bf16 autocast on a card (the paper's mixed precision); float32 on the CPU, which has no fast bf16.
    out += [f"train.amp={'true' if device.type == 'cuda' else 'false'}"]
    return out


class EpochClock:
    """A progress hook that records when each training epoch's first and last batch came."""

    def __init__(self) -> None:
        self.epochs: List[List[float]] = []

    def __call__(self, iterable, desc: str = "", total: Optional[int] = None, **_: Any):
        if ", epoch " not in desc:
            return iterable
        times: List[float] = []
        self.epochs.append(times)

        def timed():
            for item in iterable:
                times.append(time.perf_counter())
                yield item
            times.append(time.perf_counter())

        return timed()


class BusySampler:
    """``nvidia-smi``'s utilisation of the card, sampled every 200 ms in the background."""

    def __init__(self, index: int) -> None:
        self.samples: List[tuple] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                                          "--format=csv,noheader,nounits", "-lms", "200"],
                                         stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append((time.perf_counter(), int(line)))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()

    def busy(self, start: float, end: float) -> Optional[float]:
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / (100.0 * len(window)) if window else None


def bare_backbone_images_per_s(cfg: TrainConfig, device: torch.device, steps: int) -> float:
    """The backbone with a linear classifier on pooled features: forward + backward + AdamW step
    from ready channels-last tensors, at the run's batch, size and precision."""
    model = GDFNet(model_config_for(cfg, 48, 100)).to(device).train()
    backbone = model.backbone
    classifier = torch.nn.Linear(backbone.channels, 100).to(device)
    opt = torch.optim.AdamW([*backbone.parameters(), *classifier.parameters()], lr=1e-4)
    size, batch = cfg.model.img_size, cfg.optim.batch_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, cfg.train.amp):
            logits = classifier(backbone(images).mean(dim=(2, 3)))
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        opt.step()

    for _ in range(2):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_images_per_s(dataset, batch: int, workers: int, device: torch.device, limit: int) -> float:
    """Images/s of a DataLoader alone (batches pinned for a card, nothing computed)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=collate_skipping_bad,
                                         **loader_options(workers, device, persistent=False))
    n, t0 = 0, None
    for images, *_ in loader:
        if t0 is None:  # from the first batch on: worker start-up is not the loader's pace
            t0 = time.perf_counter()
            continue
        n += len(images)
        if n >= limit:
            break
    return n / max(time.perf_counter() - t0, 1e-9)


def train_preset(preset: str, overrides: List[str], device: torch.device, out: Path) -> Dict[str, Any]:
    """One run of the preset: steady-state images/s, data wait, validation share, busy card."""
    cfg = TrainConfig.load(preset=preset, overrides=overrides)
    clock = EpochClock()
    sampler = BusySampler(device.index or 0) if device.type == "cuda" else None
    t0 = time.perf_counter()
    summary = train(cfg, out, progress=clock)
    seconds = time.perf_counter() - t0
    if sampler is not None:
        sampler.stop()
    result = summary["results"]["48"]
    history = load_checkpoint(out / "bits48" / "last.pt")["history"]
    steady = history[1:] or history
    epoch_s = sum(h["seconds"] for h in steady) / len(steady)
    validations = [h["val_seconds"] for h in history if "val_map" in h]
    every = load_preset_dict(preset).get("train", {}).get("eval_every", 1)  # the preset's schedule, not this run's
    per_validation = sum(validations) / max(len(validations), 1)
    row = {"images/s": sum(h["images"] for h in steady) / sum(h["seconds"] for h in steady),
           "data wait": sum(h["data_wait"] * h["seconds"] for h in steady) / sum(h["seconds"] for h in steady),
           "validation s": per_validation, "epoch s": epoch_s, "preset eval_every": every,
           "validation share": per_validation / (per_validation + every * epoch_s),
           "run s": seconds, "mAP@all": result["metrics"]["map"]}
    if sampler is not None and len(clock.epochs) > 1:
        start, end = clock.epochs[1][0], clock.epochs[-1][-1]
        row["card busy"] = sampler.busy(start, end)
    return {"cfg": cfg, "row": row}


def host_syncs_per_step(preset: str, overrides: List[str], out: Path) -> Dict[str, float]:
    """Host round trips in a short run of the preset (one epoch), counted by the profiler."""
    cfg = TrainConfig.load(preset=preset, overrides=[*overrides, "optim.epochs=1", "train.eval_every=1"])
    with count_host_syncs() as count:
        train(cfg, out)
    return {"syncs/step (steps)": count.in_steps_per_step, "syncs in evaluations": count.in_evaluation,
            "syncs elsewhere": count.total - count.in_steps - count.in_evaluation, "steps": count.steps}


def sync_debug_check(cfg: TrainConfig, device: torch.device) -> str:
    """Steady-state steps under ``torch.cuda.set_sync_debug_mode("error")``: ``"pass"`` or the error."""
    data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer.from_config(cfg, 48, data, Path(tmp), device)
        trainer._set_train_mode()
        batches = list(zip(range(4), trainer.train_batches()))
        for _, (inputs, labels, sizes) in batches[:2]:  # warm-up: lazy initialisation may synchronise
            trainer.backward(inputs, labels, sizes)
            trainer.optimizer_step()
        pinned = [(i.pin_memory(), l.pin_memory(), s) for _, (i, l, s) in batches[2:]]
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for inputs, labels, sizes in pinned:
                trainer.backward(inputs, labels, sizes)
                trainer.optimizer_step()
        except RuntimeError as err:
            return f"FAILED: {err}".splitlines()[0][:200]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return "pass"


def cache_against_loader(overrides: List[str], device: torch.device, out: Path, limit: int) -> Dict[str, Any]:
    """The cpu preset's frozen-feature cache (train + test photos through the backbone) against the
    evaluation loader alone over the same photos."""
    cfg = TrainConfig.load(preset="cpu", overrides=[*overrides, "train.frozen_backbone=true"])
    probe = GDFNet(model_config_for(cfg, 48, 2)).to(device).eval()
    data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size))
    workers = resolve_num_workers(cfg.data.num_workers, device)
    batch = resolve_eval_batch_size(cfg.eval.batch_size, device, cfg.model.img_size)
    loader = loader_images_per_s(data.train_eval, batch, workers, device, limit)
    t0 = time.perf_counter()
    sets = cached_features(cfg, data, probe.backbone, device, out)
    seconds = time.perf_counter() - t0
    images = len(sets["train"].values) + len(sets["test"].values)
    return {"eval loader images/s": loader, "feature cache images/s": images / seconds,
            "cache / loader": images / seconds / loader, "workers": workers, "eval batch": batch}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser(__doc__, "gpu_training")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="image folder, one sub-folder per class")
    parser.add_argument("--weights", type=Path, default=LITE0 if LITE0.is_file() else None,
                        help="EfficientNet-Lite0 ImageNet weights (CPU runs and the cpu preset)")
    args = parser.parse_args(argv)
    device = resolve(args.device)
    if not args.photos.is_dir():
        raise SystemExit(f"--photos {args.photos}: no such folder (a fresh clone has no ../shared; pass a folder "
                         "of photos with one sub-folder per class)")
    classes, epochs, batch = SIZES["quick" if args.quick else device.type]
    rows: List[Dict[str, Any]] = []
    checks: Dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for preset in ("paper", "cpu", "finetune"):
            overrides = preset_overrides(preset, device, args.photos, classes, epochs, batch, args.weights, args.quick)
            run = train_preset(preset, overrides, device, tmp / f"{preset}-run")
            cfg = run["cfg"]
            bare = bare_backbone_images_per_s(cfg, device, steps=3 if args.quick else 10)
            syncs = host_syncs_per_step(preset, overrides, tmp / f"{preset}-count")
            row = {"preset": f"{preset} (fine-tuned)", "backbone": cfg.model.backbone.name,
                   "px": cfg.model.img_size, "batch": batch, "precision": "bf16" if cfg.train.amp else "float32",
                   **run["row"], "bare backbone images/s": bare, "ours / bare": run["row"]["images/s"] / bare, **syncs}
            if device.type == "cuda":
                checks[preset] = row["sync debug"] = sync_debug_check(cfg, device)
            rows.append(row)
            print(f"done: {preset}", flush=True)
            if preset == "paper":
                workers = resolve_num_workers(cfg.data.num_workers, device)
                data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size))
                limit = 64 if args.quick else 600
                loaders = {"train loader images/s": loader_images_per_s(data.train_aug, batch, workers, device, limit),
                           "eval loader images/s": loader_images_per_s(data.train_eval, batch, workers, device, limit),
                           "workers": workers}
        cache = cache_against_loader(preset_overrides("cpu", device, args.photos, classes, epochs, batch, args.weights,
                                                      args.quick), device, tmp / "cache", 64 if args.quick else 600)
    label = device_label(device)
    columns = ["preset", "backbone", "px", "batch", "precision", "images/s", "bare backbone images/s", "ours / bare",
               "data wait", "epoch s", "validation s", "preset eval_every", "validation share", "card busy",
               "syncs/step (steps)", "syncs in evaluations", "syncs elsewhere", "mAP@all",
               "run s"] + (["sync debug"] if device.type == "cuda" else [])
    body = (f"Device: {label}. Photos: the first {classes} classes of `{args.photos.name}` (real JPEGs), "
            f"{epochs} epochs, 48 bits; images/s over the epochs after the first. 'validation share': one "
            "validation's time against the preset's schedule (a validation every `eval_every` epochs of the "
            "measured length). 'card busy': `nvidia-smi` utilisation sampled every 200 ms over the epochs after "
            "the first. Host round trips counted by `torch.profiler` over a one-epoch run (optimizer internals "
            "and the data loader's own work excluded): per step inside the training steps; in its validation and "
            "final evaluation (encoding and mAP on the host); elsewhere (building the model, loading weights, "
            "reading the data: once per run).\n\n" + markdown_table(rows, columns)
            + f"\n\nLoaders alone ({loaders['workers']} workers, batch {batch}, the paper transforms at "
            f"{rows[0]['px']} px): training {loaders['train loader images/s']:.0f} images/s, evaluation "
            f"{loaders['eval loader images/s']:.0f} images/s.\n\nFrozen-feature cache (cpu preset, {cache['workers']} "
            f"workers, eval batch {cache['eval batch']}): {cache['feature cache images/s']:.0f} images/s against "
            f"{cache['eval loader images/s']:.0f} for the evaluation loader alone ({cache['cache / loader']:.2f}x).")
    name = "gpu_training" + ("_quick" if args.quick else "") + "_" + slug(label if device.type == "cuda" else "cpu")
    data_out = rows + [{"loaders": loaders, "feature_cache": cache, "sync_debug": checks}]
    md = write_results(args.results, name, "GDF-Net training at the device's speed", body, data_out,
                       command_line(argv, "gpu_training"))
    barh_plot([f"{r['preset']}" for r in rows] + [f"bare {r['backbone']}" for r in rows],
              [r["images/s"] for r in rows] + [r["bare backbone images/s"] for r in rows],
              "training images/s", args.results / f"{name}.png", label)
    print(body)
    print(f"\nwritten: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
