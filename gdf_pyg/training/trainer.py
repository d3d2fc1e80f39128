"""Training of one code length: the epoch loop, model selection on the validation split, and
checkpoints that resume exactly.

A :class:`Trainer` is handed what it trains with, built: the model, its optimiser and schedule,
the losses, the batches (:mod:`gdf_pyg.training.batches`) and the evaluator that selects
(:mod:`gdf_pyg.retrieval.evaluation`); :meth:`Trainer.from_config` builds them from a run's
configuration. Several processes (``torchrun``) train one model with DDP: each takes its part of
every global batch, the losses see the outputs of the whole global batch, and evaluation is
shared among the processes (:mod:`gdf_pyg.engine.distributed`).

No step reads anything back from the device (a GPU's host would wait): the loss terms are summed
where they are computed and read, logged and checked for NaN every ``log_every`` steps
(:mod:`gdf_pyg.training.monitor`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from ..data.loading import resolve_eval_batch_size, resolve_num_workers
from ..engine.amp import autocast
from ..engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint, seed_everything, state_dict_cpu
from ..engine.distributed import DistContext, barrier, every_process, from_main, process_seed
from ..engine.encoding import EncodedSet
from ..models.gdfnet import GDFNet, GDFNetConfig, GDFOutput
from ..nn.hash import HashHead
from ..nn.losses import GDFLoss
from ..nn.sync import convert_batchnorm
from ..retrieval.evaluation import Evaluator
from ..utils.checks import ConfigError
from ..utils.profiling import evaluation_region, step_region
from ..utils.progress import Progress, no_progress
from .batches import BatchSettings, TrainingBatches
from .config import OptimConfig, TrainConfig
from .ema import WeightAverage
from .monitor import StepMonitor
from .run_data import RunData, run_evaluator
from .schedule import make_scheduler

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainerSettings", "TrainingDivergedError", "model_config_for"]


class TrainingDivergedError(RuntimeError):
    """The loss or a gradient became NaN or inf; the last good checkpoint is kept."""


def model_config_for(cfg: TrainConfig, bits: int, num_classes: int) -> GDFNetConfig:
    """The model section of ``cfg`` for one code length and the dataset's classes."""
    return dataclasses.replace(cfg.model, bits=bits, num_classes=num_classes)


class _Step(nn.Module):
    """The training forward pass as a module, so DDP can wrap it: images or cached maps."""

    def __init__(self, model: GDFNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, is_feature_map: bool):
        return self.model.forward_head(inputs) if is_feature_map else self.model(inputs)


@dataclass
class TrainerSettings:
    """How the loop runs (from a run's ``optim`` and ``train`` sections)."""

    label: str
    epochs: int
    eval_every: int = 1
    log_every: int = 50
    amp: bool = False
    grad_clip: float = 0.0
    frozen: bool = False
    freeze_backbone_bn: bool = True

    @classmethod
    def from_config(cls, cfg: TrainConfig, label: str) -> "TrainerSettings":
        t = cfg.train
        return cls(label, cfg.optim.epochs, t.eval_every, t.log_every, t.amp, cfg.optim.grad_clip, t.frozen_backbone,
                   t.freeze_backbone_bn)


def place_model(model: GDFNet, device: torch.device, ctx: DistContext, frozen: bool, frozen_stages: int = 0) -> GDFNet:
    """Global batch statistics under several processes, the device, a frozen backbone (or its
    first ``frozen_stages`` stages)."""
    if ctx.active:
        # Ours on every device: torch's SyncBatchNorm reads each layer's counts back from the
        # GPU (it drops empty shards by a mask), a wait per layer per step; ours reads nothing.
        model = convert_batchnorm(model)
    model.to(device)
    if frozen:
        model.backbone.requires_grad_(False)
    elif frozen_stages:
        try:
            model.backbone.freeze_stages(frozen_stages)
        except ValueError as err:
            raise ConfigError(f"train.frozen_stages: {err}") from None
    return model


def similarity_bits_of_head(model: GDFNet, head: HashHead) -> Optional[int]:
    """The bits of ``head``'s codes that ``loss.similarity`` reaches: those it keeps for the
    backbone's similarities when the model's config says which (``hash_similarity_min_bits``),
    else all (``None``)."""
    return head.similarity_bits if model.config.hash_similarity_min_bits else None


def freeze_unreached(model: GDFNet, cfg: TrainConfig) -> None:
    """Freezes the parameters no loss term reaches, so that every trained parameter gets a gradient
    in every step (DDP waits for each one): the classifier on the codes serves only the
    classification term (and, for the heads of a shared encoder, the distillation term)."""
    reached = cfg.loss.classification > 0 or (cfg.train.shared_encoder and cfg.loss.distill > 0)
    if not reached:
        for head in model.hash_heads():
            head.classifier.requires_grad_(False)


def optimizer_for(model: GDFNet, optim: OptimConfig, frozen: bool) -> torch.optim.Optimizer:
    """AdamW over the head (``optim.lr``) and, when it trains, the backbone (``optim.backbone_lr``)."""
    groups = [{"params": list(model.head_modules().parameters()), "lr": optim.lr}]
    if not frozen:
        groups.append({"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": optim.backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=optim.weight_decay)


class Trainer:
    """Trains, selects and checkpoints the model of one code length.

    Args:
        model: the model, placed (:func:`place_model`).
        optimizer, scheduler: its optimiser and timm per-step scheduler.
        loss_fn: the training objective.
        batches: the run's batches.
        evaluator: codes of the run's splits, for model selection and the final report.
        settings: how the loop runs.
        out: the folder of this code length (``RUN_DIR/bits{K}``).
        data: the run's data (classes, validation split).
        average: the moving average of the weights that selection uses, if any.
        ctx: this process's place in a multi-process job.
        progress: the progress-bar wrapper (the main process only).
        run_config: the run's configuration as plain data, kept in checkpoints.
    """

    def __init__(self, model: GDFNet, optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: GDFLoss,
                 batches: TrainingBatches, evaluator: Evaluator, settings: TrainerSettings, out: Path, *,
                 data: RunData, average: Optional[WeightAverage] = None, ctx: Optional[DistContext] = None,
                 progress: Progress = no_progress, run_config: Optional[Dict[str, Any]] = None) -> None:
        self.model, self.optimizer, self.scheduler, self.loss_fn = model, optimizer, scheduler, loss_fn
        self.batches, self.evaluator, self.settings, self.out, self.data = batches, evaluator, settings, out, data
        self.average, self.ctx = average, ctx or DistContext()
        self.progress = progress if self.ctx.is_main else no_progress
        self.run_config = run_config or {}
        self.label = settings.label
        self.device = batches.device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.step_module: nn.Module = _Step(model)
        if self.ctx.active:
            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.epoch, self.step = 0, 0
        self.best_metric, self.best_epoch = -1.0, -1
        self.best_state: Optional[Dict[str, Tensor]] = None
        self.history: List[Dict[str, float]] = []

    # ---- building from a configuration ---------------------------------------------------
    @classmethod
    def from_config(cls, cfg: TrainConfig, bits: int, data: RunData, out: Path, device: torch.device,
                    features: Optional[Dict[str, EncodedSet]] = None, progress: Progress = no_progress,
                    ctx: Optional[DistContext] = None) -> "Trainer":
        """The trainer of ``bits`` bits of the run ``cfg`` on ``data`` (``features``: the cached
        backbone maps of a frozen backbone)."""
        ctx = ctx or DistContext()
        frozen = cfg.train.frozen_backbone
        seed_everything(cfg.train.seed)  # the same weights in every process
        model = place_model(cls.new_model(cfg, bits, data), device, ctx, frozen, cfg.train.frozen_stages)
        if ctx.rank:  # from here on each process draws its own dropout masks
            seed_everything(process_seed(cfg.train.seed, ctx.rank))
        freeze_unreached(model, cfg)
        optimizer = optimizer_for(model, cfg.optim, frozen)
        average = WeightAverage(model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        settings = BatchSettings(cfg.optim.batch_size, cfg.train.seed, cfg.model.img_size,
                                 resolve_num_workers(cfg.data.num_workers, device), cfg.train.cached_views,
                                 cfg.train.feature_flip, cfg.data.skip_bad_images)
        batches = TrainingBatches(data, settings, device, ctx, features if frozen else None)
        scheduler = make_scheduler(optimizer, cfg.optim.scheduler, cfg.optim.epochs, cfg.optim.warmup_epochs,
                                   batches.steps_per_epoch)
        evaluator = run_evaluator(data, device, resolve_eval_batch_size(cfg.eval.batch_size, device, cfg.model.img_size),
                                  ctx, settings.num_workers, progress if ctx.is_main else no_progress,
                                  features if frozen else None)
        return cls(model, optimizer, scheduler, GDFLoss(cfg.loss), batches, evaluator,
                   TrainerSettings.from_config(cfg, cls.label_for(bits)), out, data=data, average=average, ctx=ctx,
                   progress=progress, run_config=cfg.to_dict())

    @staticmethod
    def label_for(bits: Any) -> str:
        return f"{bits} bits"

    @staticmethod
    def new_model(cfg: TrainConfig, bits: Any, data: RunData) -> GDFNet:
        """The model to train, before placing: from the config, or the weights of ``train.init_from``."""
        model = GDFNet(model_config_for(cfg, bits, data.num_classes))
        if cfg.train.init_from is not None:
            start = Path(cfg.train.init_from).expanduser() / f"bits{bits}" / "best.pt"
            model.load_state_dict(load_checkpoint(start)["model"])
            log.info("%s bits: starting from the weights of %s", bits, start)
        return model

    @property
    def bits(self) -> int:
        return self.model.bits

    @property
    def selected_model(self) -> GDFNet:
        """The weights validated, selected and saved: the moving average with
        ``optim.ema_decay``, else the trained model itself."""
        return self.average.module if self.average is not None else self.model

    # ---- checkpoints --------------------------------------------------------------------
    def checkpoint(self, rng: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        """Everything needed to resume exactly, as plain data; ``rng``: every process's generators
        (:meth:`process_generators`; this process's alone by default)."""
        rng = rng or [capture_rng()]
        return {
            "kind": "gdf-pyg-train",
            "config": self.run_config,
            "model_config": self.model.config.to_dict(),
            "classes": self.data.classes,
            "bits": self.bits,
            "device": self.device.type,
            "epoch": self.epoch,
            "step": self.step,
            "model": state_dict_cpu(self.model),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.batches.generator.get_state(),
            "rng": rng[0],
            "rng_by_process": rng,
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
        for key in ("optimizer", "generator", "rng", "rng_by_process", "average", "best_model"):
            state.pop(key)
        return state

    def process_generators(self) -> List[Dict[str, Any]]:
        """Every process's generator states, in rank order (every process takes part)."""
        return every_process(capture_rng(), self.ctx)

    def _restore_generators(self, state: Dict[str, Any], path: Path) -> None:
        saved = state.get("rng_by_process") or [state["rng"]]
        if len(saved) == self.ctx.world_size:
            restore_rng(saved[self.ctx.rank])
            return
        log.warning("%s was written by %d process(es), resumed by %d: the per-process generators are seeded anew "
                    "(the run continues, but not as the uninterrupted run would have)", path, len(saved),
                    self.ctx.world_size)
        restore_rng(saved[0])
        if self.ctx.rank:
            seed_everything(process_seed(int(state["step"]), self.ctx.rank))

    def resume(self, path: Path) -> None:
        """Continues from ``path`` as read by the main process (other machines need not see it)."""
        state = from_main(load_checkpoint(path) if self.ctx.is_main else None, self.ctx)
        if state.get("bits") != self.bits:
            raise ConfigError(f"{path}: checkpoint holds a {state.get('bits')}-bit model, expected {self.bits}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.generator.set_state(state["generator"])
        self._restore_generators(state, path)
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
    def train_batches(self) -> Iterator[Tuple[Tensor, Tensor, Optional[List[int]]]]:
        """``(inputs, labels, sizes)`` of this process for every step of the current epoch."""
        return self.batches.epoch(self.epoch)

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
        with autocast(self.device, self.settings.amp):
            out = self.step_module(inputs, self.settings.frozen)
        terms = self.losses(out, labels, sizes)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        return terms

    def losses(self, out: GDFOutput, labels: Tensor, sizes: Optional[List[int]] = None) -> Dict[str, Tensor]:
        """The loss terms, in float32, of the model's output (``sizes``: every process's rows)."""
        class_logits = None if out.class_logits is None else out.class_logits.float()
        teacher = out.pooled.float() if out.pooled is not None and self.loss_fn.weights.similarity else None
        return self.loss_fn(out.codes.float(), out.logits.float(), labels, class_logits, shard_sizes=sizes,
                            teacher=teacher, similarity_bits=similarity_bits_of_head(self.model, self.model.head))

    def optimizer_step(self) -> None:
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update()
        self.step += 1
        self.scheduler.step_update(self.step)

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.settings.frozen:
            self.model.backbone.eval()
        elif self.settings.freeze_backbone_bn:
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
                                total=self.batches.steps_per_epoch)
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
            if len(monitor) >= self.settings.log_every:
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
        images = n_images if self.batches.frozen or not self.batches.settings.skip_bad_images else self._global_sum(n_images)
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
        """Binary codes of the whole ``train`` or ``test`` split with the selected weights (or
        ``model``'s), as ``gdf-pyg eval`` computes them (:mod:`gdf_pyg.retrieval.evaluation`)."""
        return self.evaluator.codes(model or self.selected_model, split, selection)

    def validation_map(self, codes: Optional[EncodedSet] = None) -> float:
        """mAP@all of the validation images against the rest of the training split."""
        return self.evaluator.validation_map(self.selected_model, self.data.val_pos, self.data.fit_pos, codes)

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
        """Trains to the settings' epochs, evaluating every ``eval_every`` epochs and after the
        last; ``last.pt`` is written after every epoch (by the main process)."""
        s = self.settings
        while self.epoch < s.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            t0 = time.perf_counter()
            with evaluation_region():
                self._select(stats, self.epoch % s.eval_every == 0 or self.epoch == s.epochs)
            stats["val_seconds"] = time.perf_counter() - t0
            stats["epoch"] = float(self.epoch)
            self.history.append(stats)
            generators = self.process_generators()
            if self.ctx.is_main:
                val = ", ".join(f"{k.replace('_', ' ').replace('map', 'mAP')} {v:.4f}" for k, v in stats.items()
                                if k.startswith("val_map"))
                log.info("%s, epoch %d/%d: loss %.4f, %.0f images/s (%.0f%% of the time waiting for data)%s",
                         self.label, self.epoch, s.epochs, stats.get("loss", float("nan")),
                         stats["images_per_s"], 100 * stats["data_wait"], f", {val}" if val else "")
                save_checkpoint(self.checkpoint(generators), self.out / "last.pt")
            barrier(self.ctx)
