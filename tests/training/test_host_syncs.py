"""Training steps that never make a GPU's host wait, counted on the CPU with torch.profiler: the
operators that would read a device value back (``.item()``, ``bool()``, ``nonzero``, boolean
masks, ``unique``) inside steady-state steps, through ``gdf-pyg train`` and under 2 processes."""
from __future__ import annotations

from pathlib import Path

import torch

from gdf_pyg.utils.profiling import count_host_syncs

from ..conftest import run_in_processes

SMALL = ["data.dataset=synthetic", "data.synthetic.num_classes=6", "data.synthetic.train_per_class=10",
         "data.synthetic.test_per_class=3", "model.backbone.name=resnet10t", "model.backbone.pretrained=false",
         "model.img_size=64", "optim.batch_size=8", "optim.warmup_epochs=0", "train.device=cpu"]


def _count(tmp_path: Path, preset: str, *overrides: str):
    from gdf_pyg.cli import main

    with count_host_syncs() as count:
        assert main(["train", "--preset", preset, "--out", str(tmp_path / "run"), "--no-progress", *SMALL,
                     *overrides]) == 0
    return count


def _assert_steps_read_nothing_back(count) -> None:
    """Two epochs of 6 steps: no round trip inside a step; everything else but the evaluations
    (whose mAP is computed on the host): at most one per step."""
    assert count.steps == 2 * 6
    assert count.in_steps == 0, count.by_op
    assert count.total - count.in_evaluation <= count.steps, (count.total, count.in_evaluation, count.by_op)


def test_paper_preset_steps_read_nothing_back(tmp_path):
    # Fine-tuned backbone, 32 attention parts, dynamic 3-NN graph, bf16 autocast (on the CPU too).
    count = _count(tmp_path, "paper", "optim.epochs=2", "train.bits=[12]")
    _assert_steps_read_nothing_back(count)


def test_cpu_preset_steps_read_nothing_back(tmp_path):
    # Frozen backbone: cached maps, augmented views, a shared encoder with two heads.
    count = _count(tmp_path, "cpu", "optim.epochs=2", "train.bits=[12,24]", "train.cached_views=1",
                   "model.img_size=128")
    _assert_steps_read_nothing_back(count)


def test_finetune_preset_steps_read_nothing_back(tmp_path):
    # Backbone trained after its first 3 stages, shared encoder, augmented photos.
    count = _count(tmp_path, "finetune", "optim.epochs=2", "train.bits=[12,24]", "train.eval_every=1",
                   "model.graph.k=3")
    _assert_steps_read_nothing_back(count)


def _epoch_syncs(rank, world, root):
    from gdf_pyg.models.gdfnet import GDFNet
    from gdf_pyg.training.config import TrainConfig
    from gdf_pyg.engine.distributed import DistContext
    from gdf_pyg.training.run_data import build_run_data
    from gdf_pyg.training.trainer import Trainer, model_config_for

    cfg = TrainConfig.load(preset="paper", overrides=[*SMALL, "train.bits=[12]", "optim.epochs=1",
                                                      "data.val_fraction=0.0"])
    data = build_run_data(cfg, GDFNet(model_config_for(cfg, 12, 6)).image_config)
    trainer = Trainer.from_config(cfg, 12, data, Path(root), torch.device("cpu"), ctx=DistContext(rank, world))
    with count_host_syncs() as count:
        stats = trainer.train_epoch()
    return count.steps, count.in_steps, stats["loss"]


def test_two_processes_read_nothing_back_in_their_steps(tmp_path):
    (steps0, syncs0, loss0), (steps1, syncs1, loss1) = run_in_processes(_epoch_syncs, str(tmp_path), timeout=180)
    assert steps0 == steps1 == 7 and syncs0 == syncs1 == 0
    assert loss0 == loss1  # the losses of the global batch: every process holds the same
