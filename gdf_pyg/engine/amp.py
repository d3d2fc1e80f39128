"""Mixed precision: bfloat16 autocast on CPU and CUDA, or none."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["autocast"]


def autocast(device: torch.device, enabled: bool) -> ContextManager:
    """bfloat16 autocast for ``device`` when ``enabled`` (``train.amp``), else a no-op.

    bfloat16 keeps float32's range, so no loss scaling is needed; the same rules run on the
    CPU, which is how mixed precision is tested without a GPU. Graph construction, the losses
    and evaluation always run in float32 (:mod:`gdf_pyg.nn.graph`, the trainer).
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
