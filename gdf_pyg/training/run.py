"""A whole training run: every code length of a configuration, and its reports.

:func:`train` runs a :class:`~gdf_pyg.training.config.TrainConfig`: one model per code
length, model selection on a validation split carved out of the training data (never the
test set), checkpoints that resume exactly, and a final evaluation with the field's protocol
(queries = test split, database = training split) through the same encoding as
``gdf-pyg eval``. Progress goes through a caller-supplied wrapper; the library only logs.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from torch import nn

from ..data.loading import resolve_eval_batch_size, resolve_num_workers
from ..data.transforms import TRAIN_SCALE
from ..engine.checkpoint import save_checkpoint
from ..engine.distributed import DistContext, all_true, barrier, close_distributed, from_main, init_distributed, main_first
from ..engine.encoding import EncodedSet, cache_key, encode_dataset, load_feature_cache, save_feature_cache
from ..engine.inference import resolve_device
from ..models.gdfnet import GDFNet
from ..nn.backbone import FeatureBackbone, image_config_of, num_stages_of
from ..utils.checks import ConfigError
from ..utils.config_io import to_dict
from ..utils.profiling import evaluation_region
from ..utils.progress import Progress, no_progress
from ..utils.version import __version__
from .config import TrainConfig
from .run_data import RunData, build_run_data
from .trainer import Trainer

log = logging.getLogger(__name__)

__all__ = ["cached_features", "feature_cache_identity", "train", "train_bits", "train_shared"]


def cached_features(cfg: TrainConfig, data: RunData, backbone: nn.Module, device: torch.device, cache_dir: Path,
                    progress: Progress = no_progress, ctx: Optional[DistContext] = None) -> Dict[str, EncodedSet]:
    """Backbone feature maps (of ``backbone``: images to maps) of the training and test splits,
    computed once (in float32, in
    the evaluation batches, shared among the processes) and kept in ``cache_dir`` for every
    later run with the same backbone, image size, batch size and data; with
    ``train.cached_views`` also that many augmented views of the images the model trains on
    (``view1``, ``view2``, ...; positions in the training split), kept in a file of their own."""
    ctx = ctx or DistContext()
    batch_size = resolve_eval_batch_size(cfg.eval.batch_size, device, cfg.model.img_size)
    identity = feature_cache_identity(cfg, data, device, batch_size)
    backbone.eval()
    plain = (("train", data.train_eval, data.train_paths), ("test", data.test_eval, data.test_paths))
    sets = _cached_sets(cache_dir / f"features-{cache_key(identity)}.pt", plain, cfg, batch_size, backbone, device,
                        progress, ctx, data.skipped)
    views = cfg.train.cached_views
    if views:
        # Training inputs only, never replayed into reported codes: float16 halves their size.
        view_identity = {**identity, "views": views, "scale": list(TRAIN_SCALE), "fit": data.fit_pos.tolist(),
                         "format": "float16", "views_seed": cfg.train.seed}
        augmented = [(f"view{v}", data.train_aug, data.fit_paths) for v in range(1, views + 1)]
        view_sets = _cached_sets(cache_dir / f"views-{cache_key(view_identity)}.pt", augmented, cfg, batch_size,
                                 backbone, device, progress, ctx, [], torch.float16,  # unreadable: as in the plain view
                                 seed=cfg.train.seed)
        for view in view_sets.values():
            view.positions = data.fit_pos[view.positions]  # rows of train_aug -> positions in the split
        sets.update(view_sets)
    return sets


def feature_cache_identity(cfg: TrainConfig, data: RunData, device: torch.device, batch_size: int) -> Dict[str, Any]:
    """Everything that decides the cached maps (the cache's file is named by its hash): the
    backbone and its weights file, the image size and batches, the data's files, the device, how
    unreadable images are handled, the seed of a randomly initialised backbone, and the versions of
    the libraries that compute the maps."""
    bb = cfg.model.backbone
    identity = {"backbone": to_dict(bb), "img_size": cfg.model.img_size, "batch_size": batch_size,
                "data": data.identity, "format": "float32", "device": device.type,
                "skip_bad_images": cfg.data.skip_bad_images,
                "seed": cfg.train.seed if not (bb.pretrained or bb.weights_file) else None,
                "versions": {"gdf_pyg": __version__, "torch": torch.__version__, "timm": timm.__version__}}
    if bb.weights_file:
        wf = Path(bb.weights_file).expanduser()
        identity["weights"] = [str(wf.resolve()), wf.stat().st_size, int(wf.stat().st_mtime)]
    return identity


def _cached_sets(path: Path, sources: Sequence[Tuple[str, Any, List[str]]], cfg: TrainConfig, batch_size: int,
                 backbone: nn.Module, device: torch.device, progress: Progress, ctx: DistContext, skipped: List[str],
                 dtype: torch.dtype = torch.float32, seed: Optional[int] = None) -> Dict[str, EncodedSet]:
    """The feature maps of ``(name, dataset, paths)`` sources from ``path``, or encoded (kept in
    ``dtype``) and saved there; images skipped as unreadable are appended to ``skipped``.

    The file is read only when every process sees it (machines without a shared disk: otherwise
    all compute the maps together, and the main process writes them). With ``seed`` (augmented
    datasets) each image of source ``i`` is drawn from its own seed, from ``seed`` and ``i``: the
    cache is reproducible, follows the run's seed, and does not depend on the workers."""
    if all_true(path.is_file(), ctx):
        sets, unreadable = load_feature_cache(path)
        skipped.extend(unreadable)
        return sets
    before = len(skipped)
    sets = {}
    for i, (name, ds, paths) in enumerate(sources):
        sets[name] = encode_dataset(backbone, ds, batch_size, device, ctx=ctx,
                                    num_workers=resolve_num_workers(cfg.data.num_workers, device),
                                    progress=progress if ctx.is_main else no_progress, desc=f"features {name}",
                                    skipped=skipped, paths=paths, seed=None if seed is None else seed * 1000 + i)
        sets[name].values = sets[name].values.to(dtype)
    if ctx.is_main:
        save_feature_cache(path, sets, skipped[before:])
    return sets


def _write_history(path: Path, history: List[Dict[str, float]]) -> None:
    keys = sorted({k for row in history for k in row})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _final_result(cfg: TrainConfig, trainer: Trainer, model: GDFNet, bits: int, out: Path,
                  checkpoint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Evaluates ``model`` (the selected one of ``bits`` bits) as ``gdf-pyg eval`` does, then writes
    ``best.pt``, ``history.csv`` and ``result.json`` (main process)."""
    with evaluation_region():  # every process takes part in encoding
        report, curve, test, train = trainer.evaluator.report(model, cfg.eval.topks, cfg.eval.radius)
    if not trainer.ctx.is_main:
        return None
    save_checkpoint(checkpoint, out / "best.pt")
    _write_history(out / "history.csv", trainer.history)
    history = trainer.history
    waits = [h["data_wait"] for h in history if "data_wait" in h]  # histories before 0.5.1 lack it
    training = sum(h["seconds"] for h in history)
    validation = sum(h.get("val_seconds", 0.0) for h in history)
    result = {
        "bits": bits, "metrics": report, "best_epoch": checkpoint["best_epoch"], "val_map": checkpoint["best_metric"],
        "pr_curve": curve.to_rows(), "train_images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "train_data_wait": float(np.mean(waits)) if waits else None,
        "train_seconds": training, "validation_seconds": validation,
        "validation_fraction": validation / max(training + validation, 1e-9),
        "queries": len(test.values), "database": len(train.values), "processes": trainer.ctx.world_size,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _finished(paths: Sequence[Path], ctx: DistContext) -> bool:
    """Whether the files exist as the main process sees them: every process is told, so that one
    on a machine that does not share the main process's disk still decides alike."""
    return bool(from_main(all(p.is_file() for p in paths), ctx))


def train_bits(cfg: TrainConfig, bits: int, data: RunData, run_dir: Path, device: torch.device,
               features: Optional[Dict[str, EncodedSet]] = None, progress: Progress = no_progress,
               resume: bool = False, ctx: Optional[DistContext] = None) -> Optional[Dict[str, Any]]:
    """Trains, selects and evaluates the model of one code length; returns its results
    (on the main process; ``None`` on the others)."""
    ctx = ctx or DistContext()
    out = run_dir / f"bits{bits}"
    if resume and _finished([out / "result.json"], ctx):
        log.info("%d bits: already finished in an earlier run, kept", bits)
        return json.loads((out / "result.json").read_text()) if ctx.is_main else None
    with main_first(ctx):
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer.from_config(cfg, bits, data, out, device, features, progress, ctx)
    if resume and _finished([out / "last.pt"], ctx):
        trainer.resume(out / "last.pt")
    trainer.fit()
    trainer.model.load_state_dict(trainer.best_state)
    return _final_result(cfg, trainer, trainer.model, bits, out, trainer.model_checkpoint())


def train_shared(cfg: TrainConfig, data: RunData, run_dir: Path, device: torch.device,
                 features: Optional[Dict[str, EncodedSet]] = None, progress: Progress = no_progress,
                 resume: bool = False, ctx: Optional[DistContext] = None) -> Dict[int, Optional[Dict[str, Any]]]:
    """Every code length as a head of one encoder (``train.shared_encoder``), trained in
    ``RUN_DIR/shared``; each code length is then selected, saved and evaluated as a plain
    GDF-Net in ``RUN_DIR/bits{K}``, like separately trained models."""
    from .shared import SharedEncoderTrainer

    ctx = ctx or DistContext()
    bits = list(cfg.train.bits)
    outs = {b: run_dir / f"bits{b}" for b in bits}
    if resume and _finished([o / "result.json" for o in outs.values()], ctx):
        log.info("shared encoder: already finished in an earlier run, kept")
        return {b: json.loads((o / "result.json").read_text()) if ctx.is_main else None for b, o in outs.items()}
    with main_first(ctx):
        if ctx.is_main:
            for o in [run_dir / "shared", *outs.values()]:
                o.mkdir(parents=True, exist_ok=True)
    trainer = SharedEncoderTrainer.from_config(cfg, bits, data, run_dir / "shared", device, features, progress, ctx)
    if resume and _finished([run_dir / "shared" / "last.pt"], ctx):
        trainer.resume(run_dir / "shared" / "last.pt")
    trainer.fit()
    return {b: _final_result(cfg, trainer, trainer.single_model(b, trainer.best_state[b]), b, outs[b],
                             trainer.model_checkpoint_of(b)) for b in bits}


def train(cfg: TrainConfig, run_dir: Path | str, *, progress: Progress = no_progress, resume: bool = False,
          cache_dir: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    """Trains every code length of ``cfg`` into ``run_dir`` and writes the reports.

    ``run_dir`` receives ``config.yaml`` (resolved), ``dataset.json`` (the files and their
    sizes), ``split.json`` (image folders), ``bits{K}/`` (``best.pt``, ``last.pt``,
    ``history.csv``, ``result.json``), ``metrics.json``, ``metrics.csv``, ``report.md``,
    ``pr_curve.csv`` and ``pr_curve.png``. With ``resume=True`` finished code lengths are
    kept and an interrupted one continues from its ``last.pt``. Started by ``torchrun``
    with several processes it trains with DDP; the main process writes and returns the
    summary, the others return ``None``.
    """
    cfg.validate()
    device = resolve_device(cfg.train.device)
    ctx = init_distributed(device)
    try:
        summary = _train_run(cfg, Path(run_dir), device, ctx, progress, resume, cache_dir)
        barrier(ctx)  # every process is done before the group goes
        return summary
    finally:
        close_distributed(ctx)


def _resolved(cfg: TrainConfig, data: RunData, device: torch.device) -> TrainConfig:
    """``cfg`` with what the run decides written in: the data's classes and the evaluation batch
    chosen for the device (so ``gdf-pyg eval`` encodes in the batches training did)."""
    if cfg.model.num_classes != data.num_classes:
        log.info("model.num_classes set to %d, the classes of the %s dataset", data.num_classes, data.name)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=data.num_classes))
    if cfg.eval.batch_size == "auto":
        batch = resolve_eval_batch_size("auto", device, cfg.model.img_size)
        log.info("eval.batch_size set to %d for %s", batch, device.type)
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_size=batch))
    n_fit = len(data.fit_pos)
    if cfg.optim.batch_size > n_fit:
        raise ConfigError(f"optim.batch_size: {cfg.optim.batch_size} is larger than the {n_fit} training images "
                          f"(after holding out data.val_fraction={cfg.data.val_fraction})")
    return cfg


def check_frozen_stages(cfg: TrainConfig) -> None:
    """``train.frozen_stages`` against the backbone's stages, before any network is built."""
    if cfg.train.frozen_stages and not cfg.train.frozen_backbone:
        stages = num_stages_of(cfg.model.backbone.name)
        if cfg.train.frozen_stages > stages:
            raise ConfigError(f"train.frozen_stages: {cfg.model.backbone.name!r} has {stages} feature stages; "
                              f"got {cfg.train.frozen_stages}")


def _train_run(cfg: TrainConfig, run_dir: Path, device: torch.device, ctx: DistContext, progress: Progress,
               resume: bool, cache_dir: Optional[Path]) -> Optional[Dict[str, Any]]:
    from .report import write_reports

    if device.type == "cuda" and ctx.active:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    cfg.model.check_feature_map()  # before anything is written or read
    check_frozen_stages(cfg)
    with main_first(ctx):  # the main process writes the folder split; the others read it
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size), run_dir,
                              write=ctx.is_main)
    cfg = _resolved(cfg, data, device)
    if ctx.is_main:
        import yaml

        log.info("%d data-loading worker(s) per process (data.num_workers=%s)",
                 resolve_num_workers(cfg.data.num_workers, device), cfg.data.num_workers)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    features = None
    if cfg.train.frozen_backbone:
        torch.manual_seed(cfg.train.seed)  # a randomly initialised backbone: the one each model starts from
        bb = cfg.model.backbone
        backbone = FeatureBackbone(bb.name, pretrained=bb.pretrained, weights_file=bb.weights_file,
                                   out_index=bb.out_index).to(device)
        cache = Path(cache_dir or cfg.train.cache_dir or run_dir / "cache")
        features = cached_features(cfg, data, backbone, device, cache, progress, ctx)
        features = {name: cached.to_device(device) for name, cached in features.items()}
        del backbone
    if cfg.train.shared_encoder:
        results = train_shared(cfg, data, run_dir, device, features, progress, resume, ctx)
    else:
        results = {bits: train_bits(cfg, bits, data, run_dir, device, features, progress, resume, ctx)
                   for bits in cfg.train.bits}
    if not ctx.is_main:
        return None
    summary = {"dataset": data.name, "num_classes": data.num_classes, "skipped_images": sorted(set(data.skipped)),
               "processes": ctx.world_size, "results": {str(b): r for b, r in results.items()}}
    write_reports(run_dir, summary)
    return summary
