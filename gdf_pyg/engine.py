"""Training and evaluation of GDF-Net hash models.

:func:`train` runs a whole :class:`~gdf_pyg.config.TrainConfig`: one model per code length,
model selection on a validation split carved out of the training data (never the test set),
checkpoints that resume exactly, and a final evaluation with the field's protocol (queries =
test split, database = training split). Progress goes through a caller-supplied wrapper; the
library itself only logs.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .distributed import DistContext, convert_batchnorm, init_distributed
from .config import ConfigError, GDFNetConfig, TrainConfig, to_dict
from .data import (
    ImageRecordDataset,
    RetrievalSplits,
    SyntheticFineGrained,
    collate_skipping_bad,
    eval_transform,
    read_splits,
    stratified_split,
    train_transform,
    write_split,
)
from .data.records import ImageRecord
from .losses import GDFLoss
from .metrics import PRCurve, pr_curve, retrieval_report
from .model import GDFNet, binarize

log = logging.getLogger(__name__)

__all__ = [
    "EncodedSet",
    "Progress",
    "RunData",
    "TrainingDivergedError",
    "build_run_data",
    "encode_dataset",
    "evaluate_codes",
    "load_model",
    "no_progress",
    "resolve_device",
    "train",
]

Progress = Callable[..., Iterable]


def no_progress(iterable: Iterable, desc: str = "", total: Optional[int] = None, **_: Any) -> Iterable:
    """The default progress wrapper: none."""
    return iterable


class TrainingDivergedError(RuntimeError):
    """The loss or a gradient became NaN or inf; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


# --------------------------------------------------------------------------------------
# Data of a run.
# --------------------------------------------------------------------------------------
@dataclass
class RunData:
    """The datasets of one run.

    ``train_eval`` is the whole training split with the evaluation transform (the
    database), ``test_eval`` the test split (the queries). Model selection uses positions
    ``val_pos`` of the training split as queries against ``fit_pos`` (the rest of the
    training split, which is also what the model trains on, through ``train_aug``).
    """

    name: str
    classes: List[str]
    train_aug: Dataset
    train_eval: Dataset
    test_eval: Dataset
    train_labels: Tensor
    test_labels: Tensor
    fit_pos: Tensor
    val_pos: Tensor
    train_paths: List[str]
    test_paths: List[str]
    identity: Dict[str, Any]
    skipped: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _positions(records: Sequence[ImageRecord], subset: Sequence[ImageRecord]) -> Tensor:
    where = {rec: i for i, rec in enumerate(records)}
    return torch.tensor(sorted(where[r] for r in subset), dtype=torch.long)


def build_run_data(cfg: TrainConfig, mean: Sequence[float], std: Sequence[float],
                   run_dir: Optional[Path] = None) -> RunData:
    """Reads (or generates) the dataset of ``cfg.data`` and carves the validation split.

    For image folders the database/query split is written to ``run_dir/split.json`` and
    read back from there on later runs in the same folder.
    """
    d, size = cfg.data, cfg.model.img_size
    if d.dataset == "synthetic":
        s = d.synthetic
        train_eval = SyntheticFineGrained(s, size, "train", mean, std)
        test_eval = SyntheticFineGrained(s, size, "test", mean, std)
        labels = train_eval.labels
        idx = list(range(len(train_eval)))
        recs = [ImageRecord(Path(f"synthetic/train/{i}"), int(labels[i])) for i in idx]
        fit, val = stratified_split(recs, d.val_fraction, d.split_seed) if d.val_fraction > 0 else (recs, [])
        fit_pos, val_pos = _positions(recs, fit), _positions(recs, val)
        aug = SyntheticFineGrained(s, size, "train", mean, std, augment=True)
        return RunData(
            "synthetic", train_eval.classes, Subset(aug, fit_pos.tolist()), train_eval, test_eval, labels,
            test_eval.labels, fit_pos, val_pos, [f"synthetic:train:{i}" for i in idx],
            [f"synthetic:test:{i}" for i in range(len(test_eval))], {"dataset": "synthetic", **to_dict(s)},
        )
    split_file = run_dir / "split.json" if run_dir is not None else None
    splits: RetrievalSplits = read_splits(d, split_file)
    if d.dataset == "folder" and split_file is not None:
        write_split(splits, Path(d.root).expanduser(), split_file)
    fit_pos, val_pos = _positions(splits.train, splits.train_minus_val), _positions(splits.train, splits.val)
    ev, tr = eval_transform(size, mean, std), train_transform(size, mean, std)
    opts = dict(use_bbox=d.bbox_crop, skip_bad=d.skip_bad_images)
    train_paths = [str(r.path) for r in splits.train]
    identity = {"dataset": d.dataset, "root": str(Path(d.root).expanduser().resolve()), "bbox": d.bbox_crop,
                "files": hashlib.sha256("\n".join(train_paths + [str(r.path) for r in splits.test]).encode()).hexdigest()}
    return RunData(
        splits.name, splits.classes,
        ImageRecordDataset(splits.train_minus_val, tr, **opts),
        ImageRecordDataset(splits.train, ev, **opts),
        ImageRecordDataset(splits.test, ev, **opts),
        torch.tensor([r.label for r in splits.train]), torch.tensor([r.label for r in splits.test]),
        fit_pos, val_pos, train_paths, [str(r.path) for r in splits.test], identity,
    )


def _batches(loader: DataLoader, skipped: Optional[List[str]], paths: Optional[List[str]] = None):
    """Batches of a loader; images skipped as unreadable are logged and appended to ``skipped``."""
    for images, labels, indices, bad in loader:
        for i in bad:
            path = paths[i] if paths is not None else f"item {i}"
            log.warning("skipped unreadable image %s", path)
            if skipped is not None:
                skipped.append(path)
        if images is not None:
            yield images, labels, indices


# --------------------------------------------------------------------------------------
# Encoding and evaluation.
# --------------------------------------------------------------------------------------
@dataclass
class EncodedSet:
    """Codes (or features) of the readable items of a dataset, with their positions."""

    values: Tensor
    positions: Tensor


@torch.no_grad()
def encode_dataset(
    fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    *,
    num_workers: int = 0,
    progress: Progress = no_progress,
    desc: str = "encode",
    skipped: Optional[List[str]] = None,
    paths: Optional[List[str]] = None,
    amp: bool = False,
) -> EncodedSet:
    """Applies ``fn`` (images on ``device`` -> tensor) to every readable image, in order;
    unreadable images (with ``skip_bad`` datasets) are appended to ``skipped``."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping_bad)
    out, pos = [], []
    for images, _, indices in progress(_batches(loader, skipped, paths), desc=desc, total=len(loader)):
        with _autocast(device, amp):
            values = fn(images.to(device, non_blocking=True))
        out.append(values.float().cpu() if values.dtype != torch.float16 else values.cpu())
        pos.append(indices)
    if not out:
        raise RuntimeError(f"{desc}: no readable image in the dataset")
    return EncodedSet(torch.cat(out), torch.cat(pos))


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def evaluate_codes(query_codes: Tensor, query_labels: Tensor, db_codes: Tensor, db_labels: Tensor,
                   topks: Sequence[int], radius: int) -> Tuple[Dict[str, float], PRCurve]:
    """The scalar metrics and the precision-recall curve of one code length."""
    report = retrieval_report(query_codes, db_codes, query_labels, db_labels, topks=topks, radius=radius)
    return report, pr_curve(query_codes, db_codes, query_labels, db_labels)


# --------------------------------------------------------------------------------------
# Frozen-backbone feature cache.
# --------------------------------------------------------------------------------------
def _cache_key(cfg: TrainConfig, data: RunData) -> str:
    ident = {"backbone": to_dict(cfg.model.backbone), "img_size": cfg.model.img_size, "data": data.identity}
    if ident["backbone"].get("weights_file"):
        wf = Path(ident["backbone"]["weights_file"]).expanduser()
        ident["weights"] = [str(wf.resolve()), wf.stat().st_size, int(wf.stat().st_mtime)]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def cached_features(cfg: TrainConfig, data: RunData, model: GDFNet, device: torch.device, cache_dir: Path,
                    progress: Progress = no_progress) -> Dict[str, EncodedSet]:
    """Backbone feature maps of the training and test splits (evaluation transform), computed
    once and kept in ``cache_dir`` (float16) for every later run with the same backbone,
    image size and data."""
    path = cache_dir / f"features-{_cache_key(cfg, data)}.pt"
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        log.info("reusing cached backbone features %s", path)
        data.skipped.extend(state.get("skipped", []))
        return {k: EncodedSet(state[k]["values"], state[k]["positions"]) for k in ("train", "test")}
    model.backbone.eval()
    fn = lambda x: model.forward_features(x).half()  # noqa: E731
    bs, nw = cfg.optim.batch_size, cfg.data.num_workers
    before = len(data.skipped)
    out = {
        "train": encode_dataset(fn, data.train_eval, bs, device, num_workers=nw, progress=progress,
                                desc="features train", skipped=data.skipped, paths=data.train_paths, amp=cfg.train.amp),
        "test": encode_dataset(fn, data.test_eval, bs, device, num_workers=nw, progress=progress,
                               desc="features test", skipped=data.skipped, paths=data.test_paths, amp=cfg.train.amp),
    }
    state = {k: {"values": v.values, "positions": v.positions} for k, v in out.items()}
    state["skipped"] = data.skipped[before:]
    save_checkpoint(state, path)
    log.info("cached backbone features in %s", path)
    return out


# --------------------------------------------------------------------------------------
# Training of one code length.
# --------------------------------------------------------------------------------------
def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    o = cfg.optim
    total = max(1, o.epochs * steps_per_epoch)
    warm = int(o.warmup_epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if o.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if o.scheduler == "step":
            return 0.1 ** int(3 * step / total >= 2)
        return 1.0

    return f


def model_config_for(cfg: TrainConfig, bits: int, num_classes: int) -> GDFNetConfig:
    return dataclasses.replace(cfg.model, bits=bits, num_classes=num_classes)


def _state_dict_cpu(module: torch.nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _all_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([g.detach().abs().max() for g in grads])).all())


class _Step(nn.Module):
    """The training forward pass as a module, so DDP can wrap it: images or cached maps."""

    def __init__(self, model: GDFNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, is_feature_map: bool):
        return self.model.forward_head(inputs) if is_feature_map else self.model(inputs)


class _Trainer:
    """Trains one code length; see :func:`train`."""

    def __init__(self, cfg: TrainConfig, bits: int, data: RunData, out: Path, device: torch.device,
                 features: Optional[Dict[str, EncodedSet]], progress: Progress, ctx: DistContext) -> None:
        self.cfg, self.bits, self.data, self.out, self.device = cfg, bits, data, out, device
        self.features, self.progress, self.ctx = features, progress, ctx
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        self.model = GDFNet(model_config_for(cfg, bits, data.num_classes))
        self.frozen = cfg.train.frozen_backbone
        if cfg.train.init_from is not None:
            start = Path(cfg.train.init_from).expanduser() / f"bits{bits}" / "best.pt"
            self.model.load_state_dict(load_checkpoint(start)["model"])
            log.info("%d bits: starting from the weights of %s", bits, start)
        if ctx.active:
            convert_batchnorm(self.model)  # statistics over the global batch, as in one process
        self.model.to(device)
        if self.frozen:
            self.model.backbone.requires_grad_(False)
            params = [{"params": [p for p in self.model.head_modules().parameters()], "lr": cfg.optim.lr}]
        else:
            head = [p for p in self.model.head_modules().parameters()]
            params = [{"params": head, "lr": cfg.optim.lr},
                      {"params": list(self.model.backbone.parameters()), "lr": cfg.optim.backbone_lr}]
        self.params = [p for g in params for p in g["params"]]
        self.step_module: nn.Module = _Step(self.model)
        if ctx.active:
            self.step_module = DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(params, weight_decay=cfg.optim.weight_decay)
        self.loss_fn = GDFLoss(cfg.loss)
        n_fit, batch = len(data.fit_pos), cfg.optim.batch_size
        if batch > n_fit:
            raise ConfigError(f"optim.batch_size: {batch} is larger than the {n_fit} training images")
        if batch % ctx.world_size:
            raise ConfigError(f"optim.batch_size: the global batch {batch} must divide evenly among "
                              f"{ctx.world_size} processes")
        self.steps_per_epoch = n_fit // batch  # drop the ragged last batch: stable batch statistics
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, self.steps_per_epoch))
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.epoch = 0
        self.step = 0
        self.best_metric = -1.0
        self.best_epoch = -1
        self.best_state: Optional[Dict[str, Tensor]] = None
        self.history: List[Dict[str, float]] = []

    # ---- checkpoints ------------------------------------------------------------------
    def _checkpoint(self) -> Dict[str, Any]:
        return {
            "kind": "gdf-pyg-train",
            "config": self.cfg.to_dict(),
            "model_config": self.model.config.to_dict(),
            "classes": self.data.classes,
            "bits": self.bits,
            "epoch": self.epoch,
            "step": self.step,
            "model": _state_dict_cpu(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": capture_rng(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_model": self.best_state if self.best_state is not None else {},
            "history": self.history,
        }

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("bits") != self.bits:
            raise ConfigError(f"{path}: checkpoint holds a {state.get('bits')}-bit model, expected {self.bits}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        restore_rng(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_metric, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        self.best_state = state["best_model"] or None
        self.history = list(state["history"])
        log.info("%d bits: resumed from %s at epoch %d", self.bits, path, self.epoch)

    # ---- one epoch ----------------------------------------------------------------------
    def _epoch_batches(self) -> Iterable[Tuple[Tensor, Tensor]]:
        """This process's shard of each global batch of the epoch: ``(rows, flip)``.

        Every process draws the same seeded permutation and flips, so the shards of one
        global batch are disjoint and together form it. ``rows`` index ``data.fit_pos``.
        """
        bs, w, r = self.cfg.optim.batch_size, self.ctx.world_size, self.ctx.rank
        order = torch.randperm(len(self.data.fit_pos), generator=self.generator)
        flips = torch.rand(len(order), generator=self.generator) < 0.5
        shard = bs // w
        for s in range(self.steps_per_epoch):
            sel = slice(s * bs + r * shard, s * bs + (r + 1) * shard)
            yield order[sel], flips[sel]

    def _train_batches(self) -> Iterable[Tuple[Tensor, Tensor, bool]]:
        """Yields (inputs, labels, is_feature_map) for this process's shards of one epoch."""
        batches = list(self._epoch_batches())
        if self.frozen:
            feats = self.features["train"]
            # Row of each training image in the cached maps (-1: skipped as unreadable).
            row_of = torch.full((len(self.data.train_labels),), -1, dtype=torch.long)
            row_of[feats.positions] = torch.arange(len(feats.positions))
            fit_rows = row_of[self.data.fit_pos]
            for rows, flip in batches:
                idx = fit_rows[rows]
                readable = idx >= 0
                idx, flip = idx[readable], flip[readable]
                fmap = feats.values[idx].float()
                if self.cfg.train.feature_flip:
                    fmap[flip] = fmap[flip].flip(-1)
                yield fmap, self.data.train_labels[feats.positions[idx]], True
            return
        loader = DataLoader(self.data.train_aug, batch_sampler=[rows.tolist() for rows, _ in batches],
                            num_workers=self.cfg.data.num_workers, collate_fn=collate_skipping_bad)
        fit_paths = [self.data.train_paths[int(p)] for p in self.data.fit_pos]
        for images, labels, _ in _batches(loader, self.data.skipped, fit_paths):
            if len(labels) >= 2:
                yield images, labels, False

    def _reduce(self, stats: Dict[str, float]) -> Dict[str, float]:
        """Means over processes of per-process means (equal shards)."""
        if not self.ctx.active:
            return stats
        keys = sorted(stats)
        t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.ctx.world_size for k, v in zip(keys, t.tolist())}

    def train_epoch(self) -> Dict[str, float]:
        self.model.train()
        if self.frozen:
            self.model.backbone.eval()
        elif self.cfg.train.freeze_backbone_bn:
            for module in self.model.backbone.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        sums: Dict[str, float] = {}
        n_images, n_steps, t0 = 0, 0, time.perf_counter()
        progress = self.progress if self.ctx.is_main else no_progress
        batches = progress(self._train_batches(), desc=f"{self.bits} bits, epoch {self.epoch + 1}",
                           total=self.steps_per_epoch)
        for inputs, labels, is_fmap in batches:
            inputs, labels = inputs.to(self.device, non_blocking=True), labels.to(self.device)
            with _autocast(self.device, self.cfg.train.amp):
                out = self.step_module(inputs, is_fmap)
                terms = self.loss_fn(out.codes.float(), out.logits.float(), labels)
            loss = terms["loss"]
            if not bool(torch.isfinite(loss)):
                raise TrainingDivergedError(
                    f"{self.bits} bits: loss is {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}; "
                    f"the last good checkpoint is kept in {self.out}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not _all_finite(self.params):
                raise TrainingDivergedError(
                    f"{self.bits} bits: a gradient is NaN or inf at epoch {self.epoch + 1}, step {self.step + 1}; "
                    f"the last good checkpoint is kept in {self.out}"
                )
            if self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            n_steps += 1
            n_images += len(labels)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if hasattr(batches, "set_postfix"):
                # refresh=False: the bar redraws at its own interval, with the step count up to date.
                batches.set_postfix(loss=f"{sums['loss'] / n_steps:.4f}",
                                    img_s=f"{n_images / (time.perf_counter() - t0):.0f}", refresh=False)
        elapsed = time.perf_counter() - t0
        stats = self._reduce({k: v / max(n_steps, 1) for k, v in sums.items()})
        images = n_images * self.ctx.world_size
        stats.update(images=float(images), seconds=elapsed, images_per_s=images / max(elapsed, 1e-9),
                     lr=float(self.optimizer.param_groups[0]["lr"]))
        return stats

    # ---- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def codes(self, split: str) -> EncodedSet:
        """Binary codes of the whole ``train`` or ``test`` split with the current weights."""
        self.model.eval()
        bs = self.cfg.optim.batch_size
        if self.frozen:
            feats = self.features[split]
            out = []
            for s in range(0, len(feats.values), bs):
                fmap = feats.values[s:s + bs].float().to(self.device)
                with _autocast(self.device, self.cfg.train.amp):
                    out.append(binarize(self.model.forward_head(fmap).codes.float()).cpu())
            return EncodedSet(torch.cat(out), feats.positions)
        ds = self.data.train_eval if split == "train" else self.data.test_eval
        paths = self.data.train_paths if split == "train" else self.data.test_paths
        return encode_dataset(lambda x: binarize(self.model(x).codes.float()), ds, bs, self.device,
                              num_workers=self.cfg.data.num_workers, progress=self.progress,
                              desc=f"encode {split}", skipped=self.data.skipped, paths=paths, amp=self.cfg.train.amp)

    def validation_map(self) -> float:
        from .metrics import mean_average_precision

        train = self.codes("train")
        where = {int(p): i for i, p in enumerate(train.positions)}
        q = [where[int(p)] for p in self.data.val_pos if int(p) in where]
        db = [where[int(p)] for p in self.data.fit_pos if int(p) in where]
        labels = self.data.train_labels[train.positions]
        return mean_average_precision(train.values[q], train.values[db], labels[q], labels[db])

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> None:
        cfg, main = self.cfg, self.ctx.is_main
        last = self.out / "last.pt"
        while self.epoch < cfg.optim.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            evaluate = self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.optim.epochs
            if main:  # rank 0 selects, logs and writes; the others wait at the barrier
                if evaluate and len(self.data.val_pos):
                    stats["val_map"] = self.validation_map()
                    if stats["val_map"] > self.best_metric:
                        self.best_metric, self.best_epoch = stats["val_map"], self.epoch
                        self.best_state = _state_dict_cpu(self.model)
                elif not len(self.data.val_pos):
                    # No validation split: the last epoch is the model.
                    self.best_epoch, self.best_state = self.epoch, _state_dict_cpu(self.model)
                stats["epoch"] = float(self.epoch)
                self.history.append(stats)
                log.info("%d bits, epoch %d/%d: loss %.4f, %.0f images/s%s", self.bits, self.epoch, cfg.optim.epochs,
                         stats.get("loss", float("nan")), stats["images_per_s"],
                         f", val mAP {stats['val_map']:.4f}" if "val_map" in stats else "")
                save_checkpoint(self._checkpoint(), last)
            if self.ctx.active:
                dist.barrier()


def _write_history(path: Path, history: List[Dict[str, float]]) -> None:
    keys = sorted({k for row in history for k in row})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def train_bits(cfg: TrainConfig, bits: int, data: RunData, run_dir: Path, device: torch.device,
               features: Optional[Dict[str, EncodedSet]] = None, progress: Progress = no_progress,
               resume: bool = False, ctx: Optional[DistContext] = None) -> Optional[Dict[str, Any]]:
    """Trains, selects and evaluates the model of one code length; returns its results
    (on rank 0; ``None`` on the other processes)."""
    ctx = ctx or DistContext()
    out = run_dir / f"bits{bits}"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    done = out / "result.json"
    if resume and done.is_file():
        log.info("%d bits: already finished in an earlier run, kept", bits)
        return json.loads(done.read_text()) if ctx.is_main else None
    trainer = _Trainer(cfg, bits, data, out, device, features, progress, ctx)
    if resume and (out / "last.pt").is_file():
        trainer.resume(out / "last.pt")
    trainer.fit()
    if not ctx.is_main:
        return None
    trainer.model.load_state_dict(trainer.best_state)
    best = trainer._checkpoint()
    best["kind"] = "gdf-pyg-model"
    for key in ("optimizer", "scheduler", "generator", "rng", "best_model"):
        best.pop(key)
    save_checkpoint(best, out / "best.pt")
    test, train = trainer.codes("test"), trainer.codes("train")
    report, curve = evaluate_codes(test.values, data.test_labels[test.positions], train.values,
                                   data.train_labels[train.positions], cfg.eval.topks, cfg.eval.radius)
    _write_history(out / "history.csv", trainer.history)
    result = {
        "bits": bits, "metrics": report, "best_epoch": trainer.best_epoch, "val_map": trainer.best_metric,
        "pr_curve": curve.to_rows(), "train_images_per_s": float(np.mean([h["images_per_s"] for h in trainer.history])),
        "queries": len(test.values), "database": len(train.values), "processes": ctx.world_size,
    }
    done.write_text(json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------------------
# A whole run.
# --------------------------------------------------------------------------------------
def train(cfg: TrainConfig, run_dir: Path | str, *, progress: Progress = no_progress, resume: bool = False,
          cache_dir: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    """Trains every code length of ``cfg`` into ``run_dir`` and writes the reports.

    ``run_dir`` receives ``config.yaml`` (resolved), ``bits{K}/`` (``best.pt``, ``last.pt``,
    ``history.csv``, ``result.json``), ``metrics.json``, ``metrics.csv``, ``report.md``,
    ``pr_curve.csv`` and ``pr_curve.png``. With ``resume=True`` finished code lengths are
    kept and an interrupted one continues from its ``last.pt``. Started by ``torchrun``
    with several processes it trains with DDP; rank 0 writes and returns the summary, the
    other ranks return ``None``.
    """
    from .report import write_reports

    cfg.validate()
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    ctx = init_distributed(device)
    if device.type == "cuda" and ctx.active:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    probe = GDFNet(model_config_for(cfg, cfg.train.bits[0], 2))  # backbone only: normalisation and features
    if ctx.active and not ctx.is_main:
        dist.barrier()  # rank 0 writes the folder split first
    data = build_run_data(cfg, probe.mean, probe.std, run_dir if ctx.is_main else None)
    if ctx.active and ctx.is_main:
        dist.barrier()
    if cfg.model.num_classes != data.num_classes:
        log.info("model.num_classes set to %d, the classes of the %s dataset", data.num_classes, data.name)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=data.num_classes))
    n_fit = len(data.fit_pos)
    if cfg.optim.batch_size > n_fit:
        raise ConfigError(f"optim.batch_size: {cfg.optim.batch_size} is larger than the {n_fit} training images "
                          f"(after holding out data.val_fraction={cfg.data.val_fraction})")
    if ctx.is_main:
        import yaml

        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    features = None
    if cfg.train.frozen_backbone:
        cache = Path(cache_dir or cfg.train.cache_dir or run_dir / "cache")
        if ctx.active and not ctx.is_main:
            dist.barrier()  # rank 0 computes and caches the features; the others read them
        features = cached_features(cfg, data, probe.to(device), device, cache, progress)
        if ctx.active and ctx.is_main:
            dist.barrier()
    del probe
    results = {}
    for bits in cfg.train.bits:
        results[bits] = train_bits(cfg, bits, data, run_dir, device, features, progress, resume, ctx)
    if not ctx.is_main:
        return None
    summary = {"dataset": data.name, "num_classes": data.num_classes, "skipped_images": sorted(set(data.skipped)),
               "processes": ctx.world_size, "results": {str(b): r for b, r in results.items()}}
    write_reports(run_dir, summary)
    return summary


def load_model(path: Path | str, device: str | torch.device = "cpu") -> Tuple[GDFNet, Dict[str, Any]]:
    """A trained model from a checkpoint (``best.pt`` or ``last.pt``), in evaluation mode.

    The backbone is rebuilt without downloading: its weights come from the checkpoint.
    """
    state = load_checkpoint(path)
    if "model_config" not in state:
        raise ConfigError(f"{path}: not a gdf-pyg model checkpoint (no model_config)")
    mcfg = GDFNetConfig.from_dict({**state["model_config"],
                                   "backbone": {**state["model_config"]["backbone"], "pretrained": False,
                                                "weights_file": None}})
    model = GDFNet(mcfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
