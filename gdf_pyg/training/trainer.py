"""Training of one code length: the model, its optimiser and schedule, the epoch loop, model
selection on the validation split, and checkpoints that resume exactly.

Several processes (``torchrun``) train one model with DDP: each takes its shard of every
global batch, the losses see the outputs of the whole global batch, and evaluation is shared
among the processes (:mod:`gdf_pyg.training.distributed`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.loading import EpochBatches, SeededItems, loader_options, resolve_eval_batch_size, resolve_num_workers
from ..data.records import collate_skipping_bad
from ..models.gdfnet import GDFNet, GDFNetConfig, GDFOutput
from ..nn.losses import GDFLoss
from ..nn.sync import convert_batchnorm
from ..retrieval.metrics import mean_average_precision
from ..utils.checks import ConfigError
from ..utils.codes import binarize
from ..utils.profiling import evaluation_region, step_region
from ..utils.progress import Progress, no_progress
from .amp import autocast
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint, seed_everything, state_dict_cpu
from .config import TrainConfig
from .distributed import DistContext, barrier
from .ema import WeightAverage
from .encoding import EncodedSet, ImageEncoder, encode_cached, readable_batches
from .monitor import StepMonitor
from .run_data import RunData
from .schedule import make_scheduler

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingDivergedError", "model_config_for"]


# Cached maps per forward pass when validating a frozen-backbone model.
SELECTION_CHUNK = 512


class TrainingDivergedError(RuntimeError):
    """The loss or a gradient became NaN or inf; the last good checkpoint is kept."""


def model_config_for(cfg: TrainConfig, bits: int, num_classes: int) -> GDFNetConfig:
    """The model section of ``cfg`` for one code length and the dataset's classes."""
    return dataclasses.replace(cfg.model, bits=bits, num_classes=num_classes)


def _to(array: np.ndarray, device: torch.device) -> Tensor:
    """A host index array as a tensor on ``device`` (copied asynchronously to a GPU)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


class _Step(nn.Module):
    """The training forward pass as a module, so DDP can wrap it: images or cached maps."""

    def __init__(self, model: GDFNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, is_feature_map: bool):
        return self.model.forward_head(inputs) if is_feature_map else self.model(inputs)


class Trainer:
    """Trains, selects and checkpoints the model of one code length.

    Args:
        cfg: the run's configuration.
        bits: the code length.
        data: the run's datasets.
        out: the folder of this code length (``RUN_DIR/bits{K}``).
        device: where the model runs.
        features: cached backbone maps of the ``train`` and ``test`` splits (frozen backbone).
        progress: the progress-bar wrapper (the main process only).
        ctx: this process's place in a multi-process job.
    """

    def __init__(self, cfg: TrainConfig, bits: int, data: RunData, out: Path, device: torch.device,
                 features: Optional[Dict[str, EncodedSet]] = None, progress: Progress = no_progress,
                 ctx: Optional[DistContext] = None) -> None:
        self.cfg, self.bits, self.data, self.out, self.device = cfg, bits, data, out, device
        self.label = f"{bits} bits"
        self.features, self.ctx = features, ctx or DistContext()
        self.progress = progress if self.ctx.is_main else no_progress
        self.frozen = cfg.train.frozen_backbone
        self.model = self._build_model()
        self.optimizer = torch.optim.AdamW(self._param_groups(), weight_decay=cfg.optim.weight_decay)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.average = WeightAverage(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        self.step_module: nn.Module = _Step(self.model)
        if self.ctx.active:
            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.loss_fn = GDFLoss(cfg.loss)
        self.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = make_scheduler(self.optimizer, cfg.optim.scheduler, cfg.optim.epochs,
                                        cfg.optim.warmup_epochs, self.steps_per_epoch)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.num_workers = resolve_num_workers(cfg.data.num_workers, device)
        self.eval_batch_size = resolve_eval_batch_size(cfg.eval.batch_size, device, cfg.model.img_size)
        self._epoch_batches = EpochBatches(cfg.train.seed)
        self._image_loader: Optional[DataLoader] = None
        self._encoders: Dict[str, ImageEncoder] = {}
        if self.frozen:
            self._cache_index()
        self.epoch, self.step = 0, 0
        self.best_metric, self.best_epoch = -1.0, -1
        self.best_state: Optional[Dict[str, Tensor]] = None
        self.history: List[Dict[str, float]] = []

    # ---- set-up -------------------------------------------------------------------------
    def _build_model(self) -> GDFNet:
        cfg = self.cfg
        self._seed()
        model = GDFNet(model_config_for(cfg, self.bits, self.data.num_classes))
        if cfg.train.init_from is not None:
            start = Path(cfg.train.init_from).expanduser() / f"bits{self.bits}" / "best.pt"
            model.load_state_dict(load_checkpoint(start)["model"])
            log.info("%s: starting from the weights of %s", self.label, start)
        return self._place(model)

    @property
    def selected_model(self) -> GDFNet:
        """The weights validated, selected and saved: the moving average with
        ``optim.ema_decay``, else the trained model itself."""
        return self.average.module if self.average is not None else self.model

    def _seed(self) -> None:
        seed_everything(self.cfg.train.seed)

    def _place(self, model: GDFNet) -> GDFNet:
        """Global batch statistics under several processes, the device, a frozen backbone."""
        if self.ctx.active:
            # Ours on every device: torch's SyncBatchNorm reads each layer's counts back from the
            # GPU (it drops empty shards by a mask), a wait per layer per step; ours reads nothing.
            model = convert_batchnorm(model)
        model.to(self.device)
        if self.frozen:
            model.backbone.requires_grad_(False)
        return model

    def _param_groups(self) -> List[Dict[str, Any]]:
        o = self.cfg.optim
        groups = [{"params": list(self.model.head_modules().parameters()), "lr": o.lr}]
        if not self.frozen:
            groups.append({"params": list(self.model.backbone.parameters()), "lr": o.backbone_lr})
        return groups

    def _steps_per_epoch(self) -> int:
        n_fit, batch = len(self.data.fit_pos), self.cfg.optim.batch_size
        if batch > n_fit:
            raise ConfigError(f"optim.batch_size: {batch} is larger than the {n_fit} training images")
        if batch < 2 * self.ctx.world_size:
            raise ConfigError(f"optim.batch_size: the global batch {batch} must give every one of the "
                              f"{self.ctx.world_size} processes at least 2 images")
        return n_fit // batch  # the ragged last batch is dropped: stable batch statistics

    # ---- checkpoints --------------------------------------------------------------------
    def checkpoint(self) -> Dict[str, Any]:
        """Everything needed to resume exactly, as plain data."""
        return {
            "kind": "gdf-pyg-train",
            "config": self.cfg.to_dict(),
            "model_config": self.model.config.to_dict(),
            "classes": self.data.classes,
            "bits": self.bits,
            "epoch": self.epoch,
            "step": self.step,
            "model": state_dict_cpu(self.model),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "rng": capture_rng(),
            "history": self.history,
            "average": self.average.state_dict() if self.average is not None else {},
            **self._selection_state(),
        }

    def _selection_state(self) -> Dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "best_model": self.best_state if self.best_state is not None else {}}

    def _restore_selection(self, state: Dict[str, Any]) -> None:
        self.best_metric, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        self.best_state = state["best_model"] or None

    def model_checkpoint(self) -> Dict[str, Any]:
        """The selected model alone (``best.pt``): weights, configuration, classes, history."""
        state = self.checkpoint()
        state["kind"] = "gdf-pyg-model"
        for key in ("optimizer", "generator", "rng", "average", "best_model"):
            state.pop(key)
        return state

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("bits") != self.bits:
            raise ConfigError(f"{path}: checkpoint holds a {state.get('bits')}-bit model, expected {self.bits}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        restore_rng(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.scheduler.step_update(self.step)
        if self.average is not None:
            if not state.get("average"):
                raise ConfigError(f"{path}: checkpoint has no moving average of the weights; "
                                  f"resume it with optim.ema_decay=0 as it was trained")
            self.average.load_state_dict(state["average"])
        self._restore_selection(state)
        self.history = list(state["history"])
        log.info("%s: resumed from %s at epoch %d", self.label, path, self.epoch)

    # ---- batches ------------------------------------------------------------------------
    def _epoch_shards(self) -> List[Tuple[Tensor, Tensor, Tensor]]:
        """This process's shard of each global batch of the epoch: ``(rows, flip, view)``.

        Every process draws the same seeded permutation, flips and views, so the shards of
        one global batch are disjoint and together form it. ``rows`` index ``data.fit_pos``;
        ``view`` picks each image's cached feature map (0: the plain view; always 0 without
        ``train.cached_views``, drawn only with them so that runs without keep their draws).
        """
        bs = self.cfg.optim.batch_size
        order = torch.randperm(len(self.data.fit_pos), generator=self.generator)
        flips = torch.rand(len(order), generator=self.generator) < 0.5
        views = self.cfg.train.cached_views
        view = (torch.randint(0, views + 1, (len(order),), generator=self.generator) if views and self.frozen
                else torch.zeros(len(order), dtype=torch.long))
        shards = []
        for s in range(self.steps_per_epoch):
            sel = slice(s * bs, (s + 1) * bs)  # the global batch; each process keeps its part below
            shards.append((order[sel], flips[sel], view[sel]))
        return shards

    def _planned_sizes(self, shards: List[Tuple[Tensor, Tensor, Tensor]]) -> List[List[int]]:
        """Images of every process in every step, known on the host: each process's part of the
        global batch, less the images whose cached maps are missing (unreadable when cached)."""
        bs = self.cfg.optim.batch_size
        parts = [self.ctx.shard(bs, rank) for rank in range(self.ctx.world_size)]
        full = [p.stop - p.start for p in parts]
        if not (self.frozen and self._missing_rows):
            return [full for _ in shards]
        out = []
        for rows, _, view in shards:
            found = self._cached_row[view.numpy(), rows.numpy()] >= 0
            out.append([int(found[p].sum()) for p in parts])
        return out

    def _cache_index(self) -> None:
        """For each cached set (plain view, then the augmented ones), the row of every training
        image in it (-1: missing, as unreadable), on the host; and the sets' maps, where they lie
        (a run puts them on its GPU: each step's batch is then gathered where it is trained)."""
        sets = [self.features["train"]] + [self.features[f"view{v}"] for v in range(1, self.cfg.train.cached_views + 1)]
        fit = self.data.fit_pos.numpy()
        rows = []
        for feats in sets:
            row_of = np.full(len(self.data.train_labels), -1, dtype=np.int64)
            row_of[feats.positions.numpy()] = np.arange(len(feats.positions))
            rows.append(row_of[fit])
        self._cached_row = np.stack(rows)  # (1 + views, fit images)
        self._missing_rows = bool((self._cached_row < 0).any())
        self._cached_values = [feats.values for feats in sets]
        self._fit_labels = self.data.train_labels[self.data.fit_pos].to(self.device)

    def _feature_batches(self, shards: List[Tuple[Tensor, Tensor, Tensor]]) -> Iterator[Tuple[Tensor, Tensor]]:
        """Cached feature maps of this process's part of each shard, each image in its drawn view
        (images whose maps are missing left out). The indices are worked out on the host; the maps
        are gathered on the device, with every shape known in advance."""
        mine = self.ctx.shard(self.cfg.optim.batch_size)
        first = self._cached_values[0]
        for rows, flip, view in shards:
            rows, flip, view = rows[mine].numpy(), flip[mine].numpy(), view[mine].numpy()
            idx = self._cached_row[view, rows]
            if self._missing_rows:
                keep = idx >= 0
                rows, idx, flip, view = rows[keep], idx[keep], flip[keep], view[keep]
            # In the cache's memory layout (channels-last from the backbone): the layout decides the
            # rounding downstream, so runs without views train exactly as before views existed.
            fmap = torch.empty_like(first[:len(idx)], dtype=torch.float32, device=self.device)
            for v, values in enumerate(self._cached_values):
                at = np.flatnonzero(view == v)
                if len(at) == len(idx):  # one view for the whole batch (always so without views)
                    fmap.copy_(values.index_select(0, _to(idx, values.device)), non_blocking=True)
                elif len(at):
                    picked = values.index_select(0, _to(idx[at], values.device))
                    fmap.index_copy_(0, _to(at, self.device), picked.to(self.device, torch.float32, non_blocking=True))
            if self.cfg.train.feature_flip:
                fmap = torch.where(_to(flip, self.device).view(-1, 1, 1, 1), fmap.flip(-1), fmap)
            yield fmap, self._fit_labels[_to(rows, self.device)]

    def _loader(self) -> DataLoader:
        """One DataLoader for every epoch (its workers persist): each epoch sets its batches."""
        if self._image_loader is None:
            self._image_loader = DataLoader(SeededItems(self.data.train_aug), batch_sampler=self._epoch_batches,
                                            collate_fn=collate_skipping_bad,
                                            **loader_options(self.num_workers, self.device))
        return self._image_loader

    def _image_batches(self, shards: List[Tuple[Tensor, Tensor, Tensor]]) -> Iterator[Tuple[Tensor, Tensor]]:
        """Augmented images of this process's part of each shard (images skipped as unreadable
        left out), each augmented with its own seed (:mod:`gdf_pyg.data.loading`)."""
        mine = self.ctx.shard(self.cfg.optim.batch_size)
        self._epoch_batches.set_epoch(self.epoch, [rows[mine].tolist() for rows, _, _ in shards])
        for images, labels, _ in readable_batches(self._loader(), self.data.skipped, self.data.fit_paths):
            if images is None:  # every image of this shard was unreadable
                size = self.cfg.model.img_size
                images, labels = torch.empty(0, 3, size, size), torch.empty(0, dtype=torch.long)
            yield images, labels

    def train_batches(self) -> Iterator[Tuple[Tensor, Tensor, List[int]]]:
        """``(inputs, labels, sizes)`` of this process for every step of one epoch: ``sizes`` are
        the images of every process in the step, known on the host (``None`` where only the
        loading found out: unreadable images skipped under several processes). A process's part
        may be smaller than the others, or empty, where images were unreadable."""
        shards = self._epoch_shards()
        planned = self._planned_sizes(shards)
        batches = self._feature_batches(shards) if self.frozen else self._image_batches(shards)
        may_shrink = not self.frozen and self.cfg.data.skip_bad_images
        for (inputs, labels), sizes in zip(batches, planned):
            if may_shrink:
                sizes = [len(labels)] if not self.ctx.active else None
            yield inputs, labels, sizes

    # ---- one step -----------------------------------------------------------------------
    def _shard_sizes(self, n: int) -> List[int]:
        """Every process's image count in this step, exchanged (one read back from the device)."""
        if not self.ctx.active:
            return [n]
        count = torch.tensor([n], dtype=torch.long, device=self.device)
        counts = [torch.empty_like(count) for _ in range(self.ctx.world_size)]
        dist.all_gather(counts, count)
        return [int(c) for c in counts]

    def backward(self, inputs: Tensor, labels: Tensor, sizes: Optional[List[int]] = None
                 ) -> Optional[Dict[str, Tensor]]:
        """Forward (under autocast when ``train.amp``), the losses in float32 and backward;
        the gradients are those of the whole global batch. ``sizes``: every process's image count
        (exchanged when not given). ``None`` (nothing done, on every process alike) when the global
        batch holds fewer than 2 images. Nothing is read back from the device: the loss terms
        are checked for NaN when :meth:`train_epoch` reads them."""
        sizes = self._shard_sizes(len(labels)) if sizes is None else sizes
        if sum(sizes) < 2:
            log.warning("%s: step %d skipped: fewer than 2 readable images in the batch", self.label, self.step + 1)
            return None
        inputs = inputs.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.cfg.train.amp):
            out = self.step_module(inputs, self.frozen)
        terms = self.losses(out, labels, sizes)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        return terms

    def losses(self, out: GDFOutput, labels: Tensor, sizes: Optional[List[int]] = None) -> Dict[str, Tensor]:
        """The loss terms, in float32, of the model's output (``sizes``: every process's rows)."""
        class_logits = None if out.class_logits is None else out.class_logits.float()
        return self.loss_fn(out.codes.float(), out.logits.float(), labels, class_logits, shard_sizes=sizes)

    def optimizer_step(self) -> None:
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update()
        self.step += 1
        self.scheduler.step_update(self.step)

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.frozen:
            self.model.backbone.eval()
        elif self.cfg.train.freeze_backbone_bn:
            for module in self.model.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def _check_finite(self, monitor: "StepMonitor", losses: List[float], weights_finite: bool) -> None:
        """Stops the run at the first step whose loss was NaN or inf, or when a weight became so."""
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            weights = "" if weights_finite else " (and the weights are no longer finite)"
            raise TrainingDivergedError(
                f"{self.label}: loss is {losses[bad]} at epoch {self.epoch + 1}, step {monitor.first_step + bad}"
                f"{weights}; the last good checkpoint is kept in {self.out}")
        if not weights_finite:
            raise TrainingDivergedError(
                f"{self.label}: a gradient or weight became NaN or inf at epoch {self.epoch + 1}, in steps "
                f"{monitor.first_step} to {self.step}; the last good checkpoint is kept in {self.out}")

    def train_epoch(self) -> Dict[str, float]:
        """One epoch; returns the mean loss terms, images, seconds, images/s, learning rate and
        ``data_wait``: the fraction of the epoch spent waiting for the next batch (near 1: the
        data loading, not the model, sets the pace).

        The steps read nothing back from the device: their loss terms are summed where they are
        computed and read, with a check for NaN and inf, every ``train.log_every`` steps and at the
        end of the epoch (one read each time). A GPU therefore runs the steps back to back, and the
        time waited for data is time the host spent in the loader while the device worked on."""
        self._set_train_mode()
        monitor = StepMonitor()
        sums: Dict[str, float] = {}
        n_images, n_steps, t0 = 0, 0, time.perf_counter()
        batches = self.progress(self.train_batches(), desc=f"{self.label}, epoch {self.epoch + 1}",
                                total=self.steps_per_epoch)
        waited, asked = 0.0, time.perf_counter()
        for inputs, labels, sizes in batches:
            waited += time.perf_counter() - asked
            with step_region():
                terms = self.backward(inputs, labels, sizes)
                if terms is not None:  # None: a step skipped for want of readable images
                    self.optimizer_step()
                    monitor.add(terms, self.step)
                    n_steps += 1
                    n_images += sum(sizes) if sizes is not None else len(labels)
            if len(monitor) >= self.cfg.train.log_every:
                self._read(monitor, sums)
                if hasattr(batches, "set_postfix"):
                    # refresh=False: the bar redraws at its own interval, with the step count up to date.
                    batches.set_postfix(loss=f"{sums['loss'] / n_steps:.4f}",
                                        img_s=f"{n_images / (time.perf_counter() - t0):.0f}", refresh=False)
            asked = time.perf_counter()  # a skipped step's work is not time spent waiting for data
        self._read(monitor, sums)
        elapsed = time.perf_counter() - t0
        # The losses are computed on the global batch: every process holds the same values.
        stats = {k: v / max(n_steps, 1) for k, v in sums.items()}
        images = n_images if self.frozen or not self.cfg.data.skip_bad_images else self._global_sum(n_images)
        stats.update(images=float(images), seconds=elapsed, images_per_s=images / max(elapsed, 1e-9),
                     data_wait=waited / max(elapsed, 1e-9), lr=float(self.optimizer.param_groups[0]["lr"]))
        return stats

    def _read(self, monitor: "StepMonitor", sums: Dict[str, float]) -> None:
        """Reads the monitor's sums (one read back) into ``sums`` and checks them."""
        if not len(monitor):
            return
        totals, losses, weights_finite = monitor.read(self.params)
        self._check_finite(monitor, losses, weights_finite)
        for k, v in totals.items():
            sums[k] = sums.get(k, 0.0) + v
        monitor.reset()

    def _global_sum(self, n: int) -> int:
        if not self.ctx.active:
            return n
        count = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(count)
        return int(count)

    # ---- evaluation ---------------------------------------------------------------------
    def codes(self, split: str, model: Optional[GDFNet] = None, selection: bool = False) -> EncodedSet:
        """Binary codes of the whole ``train`` or ``test`` split with the current weights (or
        ``model``'s), computed as ``gdf-pyg eval`` computes them (float32, batches of
        ``eval.batch_size``), shared among the processes. For ``selection`` (validation during
        training) cached maps go through in large chunks instead: only the choice of epoch
        depends on those codes, and they differ from the exact ones by float rounding at most."""
        model = model or self.selected_model
        model.eval()
        if self.frozen:
            head = lambda fmap: binarize(model.forward_head(fmap).codes)  # noqa: E731
            return encode_cached(head, self.features[split], self.device, self.ctx,
                                 chunk=SELECTION_CHUNK if selection else None)
        if split not in self._encoders:  # one loader per split, its workers kept between validations
            ds = self.data.train_eval if split == "train" else self.data.test_eval
            paths = self.data.train_paths if split == "train" else self.data.test_paths
            self._encoders[split] = ImageEncoder(ds, self.eval_batch_size, self.device, ctx=self.ctx,
                                                 num_workers=self.num_workers, paths=paths)
        return self._encoders[split](model.encode, progress=self.progress, desc=f"encode {split}",
                                     skipped=self.data.skipped)

    def validation_sets(self, train: EncodedSet) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The validation queries and their database (the rest of the training split) among the
        ``train`` split's codes: ``(query_codes, db_codes, query_labels, db_labels)``."""
        where = {p: i for i, p in enumerate(train.positions.tolist())}
        q = [where[p] for p in self.data.val_pos.tolist() if p in where]
        db = [where[p] for p in self.data.fit_pos.tolist() if p in where]
        labels = self.data.train_labels[train.positions]
        return train.values[q], train.values[db], labels[q], labels[db]

    def validation_map(self, codes: Optional[EncodedSet] = None) -> float:
        """mAP@all of the validation images against the rest of the training split."""
        return mean_average_precision(*self.validation_sets(codes if codes is not None else
                                                            self.codes("train", selection=True)))

    # ---- the loop -----------------------------------------------------------------------
    def _select(self, stats: Dict[str, float], evaluate: bool) -> None:
        """Keeps the weights of the best validation mAP (every process decides alike)."""
        if not len(self.data.val_pos):
            # No validation split: the last epoch is the model.
            self.best_epoch, self.best_state = self.epoch, state_dict_cpu(self.selected_model)
        elif evaluate:
            stats["val_map"] = self.validation_map()
            if stats["val_map"] > self.best_metric:
                self.best_metric, self.best_epoch = stats["val_map"], self.epoch
                self.best_state = state_dict_cpu(self.selected_model)

    def fit(self) -> None:
        """Trains to ``optim.epochs``, evaluating every ``train.eval_every`` epochs and after
        the last; ``last.pt`` is written after every epoch (by the main process)."""
        cfg = self.cfg
        while self.epoch < cfg.optim.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            t0 = time.perf_counter()
            with evaluation_region():
                self._select(stats, self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.optim.epochs)
            stats["val_seconds"] = time.perf_counter() - t0
            stats["epoch"] = float(self.epoch)
            self.history.append(stats)
            if self.ctx.is_main:
                val = ", ".join(f"{k.replace('_', ' ').replace('map', 'mAP')} {v:.4f}" for k, v in stats.items()
                                if k.startswith("val_map"))
                log.info("%s, epoch %d/%d: loss %.4f, %.0f images/s (%.0f%% of the time waiting for data)%s",
                         self.label, self.epoch, cfg.optim.epochs, stats.get("loss", float("nan")),
                         stats["images_per_s"], 100 * stats["data_wait"], f", {val}" if val else "")
                save_checkpoint(self.checkpoint(), self.out / "last.pt")
            barrier(self.ctx)
