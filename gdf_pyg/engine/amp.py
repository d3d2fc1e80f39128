"""Precision: bfloat16 autocast on CPU and CUDA for training, or none; true float32 for encoding."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

import torch

__all__ = ["autocast", "full_float32"]


def autocast(device: torch.device, enabled: bool) -> ContextManager:
    """bfloat16 autocast for ``device`` when ``enabled`` (``train.amp``), else a no-op.

    bfloat16 keeps float32's range, so no loss scaling is needed; the same rules run on the
    CPU, which is how mixed precision is tested without a GPU. Graph construction, the losses
    and evaluation always run in float32 (:mod:`gdf_pyg.nn.graph`, the trainer).
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Float32 matrix products and convolutions on a GPU computed in float32, not TF32 (which
    CUDA convolutions use by default): codes then do not depend on whether the card rounds
    inputs to 10 mantissa bits, and a card's codes match the CPU's up to float32 rounding."""
    if not torch.cuda.is_available():
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
