r"""Multi-process training with PyTorch DDP (``torchrun``): gloo on CPU, nccl on GPU.

Every process sees the same seeded order of the data and takes its own contiguous shard of
each global batch (``optim.batch_size`` is the global batch). So that :math:`W` processes
compute the same gradients as one process on the whole global batch:

- the per-sample loss terms are averaged by DDP's gradient averaging (equal shards);
- the batch-level terms (bit balance, pairwise Cauchy) are computed on the codes gathered
  from every process (:func:`all_gather_cat`, differentiable);
- batch normalisation uses statistics over the global batch (:class:`GlobalBatchNorm`, which
  also works with gloo on CPU, where ``torch.nn.SyncBatchNorm`` does not).

Only rank 0 evaluates, logs progress and writes files.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

__all__ = [
    "DistContext",
    "GlobalBatchNorm",
    "all_gather_cat",
    "all_reduce_sum",
    "convert_batchnorm",
    "init_distributed",
    "is_distributed",
]


@dataclass
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: torch.device) -> DistContext:
    """Joins the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of the sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class _AllGatherCat(torch.autograd.Function):
    """Concatenation of every process's tensor (equal sizes) along dim 0."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        ctx.rank, ctx.size = dist.get_rank(), tensor.size(0)
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Every process used the whole gathered tensor: sum their gradients, keep our slice.
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Differentiable sum over processes (identity in a single process)."""
    return _AllReduceSum.apply(tensor) if is_distributed() else tensor


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Differentiable concatenation over processes (identity in a single process)."""
    return _AllGatherCat.apply(tensor) if is_distributed() else tensor


class GlobalBatchNorm(_BatchNorm):
    r"""Batch normalisation whose training statistics cover the whole global batch.

    .. math::
        \mu = \frac{\sum_p \sum_{i \in p} x_i}{\sum_p n_p}, \qquad
        \sigma^2 = \frac{\sum_p \sum_{i \in p} x_i^2}{\sum_p n_p} - \mu^2

    with the sums reduced over processes (differentiably); identical to
    ``torch.nn.BatchNorm{1,2}d`` in a single process or in evaluation mode. Accepts
    :math:`(N, C)`, :math:`(N, C, L)` and :math:`(N, C, H, W)` inputs.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and is_distributed()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        count = all_reduce_sum(torch.tensor(float(input.numel() // input.size(1)), device=input.device))
        mean = all_reduce_sum(input.sum(dims)) / count
        var = all_reduce_sum((input * input).sum(dims)) / count - mean * mean
        var = var.clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                unbiased = var.detach() * count / (count - 1).clamp_min(1.0)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
                self.num_batches_tracked.add_(1)
        shape = [1, -1] + [1] * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces every ``BatchNorm{1,2,3}d`` in ``module`` by :class:`GlobalBatchNorm`, keeping
    parameters and running statistics."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        new.to(next(module.buffers(), torch.empty(0)).device)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
