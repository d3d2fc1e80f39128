"""The learning-rate schedule: timm's per-step schedulers with linear warm-up."""
from __future__ import annotations

import math

import torch
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler

__all__ = ["make_scheduler"]


def make_scheduler(optimizer: torch.optim.Optimizer, scheduler: str, epochs: int, warmup_epochs: float,
                   steps_per_epoch: int) -> Scheduler:
    """A per-step schedule over ``epochs * steps_per_epoch`` optimizer steps.

    ``"cosine"``: linear warm-up from 0 for ``warmup_epochs``, then cosine decay to 0;
    ``"step"``: the learning rate times 0.1 from two thirds of training on; ``"none"``:
    constant after the warm-up. Call ``step_update(n)`` after the ``n``-th optimizer step
    (the schedule depends on ``n`` alone, so resuming needs nothing but the step count).
    """
    total = max(1, epochs * steps_per_epoch)
    warm = int(warmup_epochs * steps_per_epoch)
    common = dict(warmup_t=warm, warmup_lr_init=0.0, t_in_epochs=False)
    if scheduler == "cosine":
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warm), lr_min=0.0, warmup_prefix=True, **common)
    if scheduler == "step":
        return StepLRScheduler(optimizer, decay_t=math.ceil(2 * total / 3), decay_rate=0.1, **common)
    if scheduler == "none":
        return StepLRScheduler(optimizer, decay_t=total + 1, decay_rate=1.0, **common)
    raise ValueError(f"unknown scheduler {scheduler!r}; expected 'cosine', 'step' or 'none'")
