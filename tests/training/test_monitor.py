"""Loss terms summed on the device and read once per interval; divergence still stops the run."""
from __future__ import annotations

import math

import pytest
import torch

from gdf_pyg.training import TrainingDivergedError
from gdf_pyg.training.config import TrainConfig
from gdf_pyg.training.monitor import StepMonitor, all_finite

from ..conftest import TINY_RUN
from .test_trainer import image_trainer


def test_monitor_sums_terms_and_keeps_each_steps_loss():
    monitor = StepMonitor()
    for step, (a, b) in enumerate([(1.0, 0.5), (2.0, 0.25), (float("nan"), 1.0)], start=7):
        monitor.add({"loss": torch.tensor(a + b), "classification": torch.tensor(a), "balance": torch.tensor(b)}, step)
    weights = [torch.ones(3), torch.zeros(2, 2)]
    sums, losses, finite = monitor.read(weights)
    assert monitor.first_step == 7 and len(monitor) == 3
    assert sums["balance"] == 1.75 and math.isnan(sums["classification"]) and math.isnan(sums["loss"])
    assert losses[:2] == [1.5, 2.25] and math.isnan(losses[2])
    assert finite
    assert not monitor.read([torch.tensor([1.0, float("inf")])])[2]
    monitor.reset()
    assert len(monitor) == 0 and monitor.read(weights) == ({}, [], True)


def test_all_finite_is_a_device_tensor():
    flag = all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert isinstance(flag, torch.Tensor) and flag.dim() == 0 and not bool(flag)
    assert bool(all_finite([torch.ones(2)])) and bool(all_finite([]))


def test_losses_are_read_once_per_interval(tmp_path, folder_root, monkeypatch):
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "optim.epochs=1", "train.bits=[12]",
                                      "optim.batch_size=2", "train.log_every=2",
                                      "data.val_fraction=0.0"])
    trainer = image_trainer(cfg, tmp_path)
    reads = []
    original = StepMonitor.read
    monkeypatch.setattr(StepMonitor, "read", lambda self, w: reads.append(len(self)) or original(self, w))
    stats = trainer.train_epoch()
    assert trainer.batches.steps_per_epoch == 6 and reads == [2, 2, 2]  # every 2 steps; nothing left at the end
    assert math.isfinite(stats["loss"]) and stats["images"] == 12.0


def test_a_weight_made_nan_by_a_gradient_stops_within_the_interval(tmp_path, folder_root):
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "optim.epochs=1", "train.bits=[12]",
                                      "optim.batch_size=2", "train.log_every=3", "data.val_fraction=0.0"])
    trainer = image_trainer(cfg, tmp_path)
    weight = trainer.model.head.hash.weight
    weight.register_hook(lambda g: torch.full_like(g, float("inf")) if trainer.step == 5 else g)  # the 6th step
    with pytest.raises(TrainingDivergedError,
                       match=r"12 bits: a gradient or weight became NaN or inf at epoch 1, in steps 4 to 6; "
                             r"the last good checkpoint is kept in"):
        trainer.train_epoch()
    assert trainer.step == 6  # found at the end of the second interval of 3 steps
