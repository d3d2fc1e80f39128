r"""Cross-process operators for multi-process training (``torch.distributed``), exact in any
dtype and for shards of unequal size.

Every process holds its own shard of the global batch. So that :math:`W` processes compute the
same gradients as one process on the whole global batch:

- :func:`all_gather_cat` concatenates every process's tensor (shards may differ in size, or be
  empty), differentiably;
- :class:`GlobalBatchNorm` normalises with statistics over the global batch, accumulated in at
  least float32 with a two-pass variance.

In a single process (or without an initialised process group) both are the plain operation.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GlobalBatchNorm", "GlobalBatchNormAct", "all_gather_cat", "all_reduce_sum", "convert_batchnorm", "is_distributed"]


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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


_MAX_DIMS = 8


def _shard_shapes(tensor: Tensor) -> List[List[int]]:
    """Every process's tensor shape (at most :data:`_MAX_DIMS` dimensions)."""
    if tensor.dim() > _MAX_DIMS:
        raise ValueError(f"all_gather_cat takes tensors of at most {_MAX_DIMS} dimensions, got {tensor.dim()}")
    local = torch.full((_MAX_DIMS + 1,), -1, dtype=torch.long, device=tensor.device)
    local[0] = tensor.dim()
    local[1:tensor.dim() + 1] = torch.tensor(tensor.shape, dtype=torch.long)
    shapes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, local)
    return [s[1:int(s[0]) + 1].tolist() for s in shapes]


class _AllGatherCat(torch.autograd.Function):
    """Concatenation of every process's tensor along dim 0 (sizes may differ; a process without
    rows may pass any empty tensor). ``rows``: every process's row count when the caller knows
    them, else ``None`` (the shapes are exchanged, and read back from the device)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, rows: Optional[List[int]]) -> Tensor:
        if rows is None:
            shapes = _shard_shapes(tensor)
            rows = [s[0] if s else 0 for s in shapes]
            filled = [s for s, n in zip(shapes, rows) if n > 0]
            trailing = filled[0][1:] if filled else list(tensor.shape[1:])
        else:
            if len(rows) != dist.get_world_size() or rows[dist.get_rank()] != tensor.size(0):
                raise ValueError(f"all_gather_cat: rows {rows} do not match this process's {tensor.size(0)} rows "
                                 f"(rank {dist.get_rank()} of {dist.get_world_size()})")
            trailing = list(tensor.shape[1:])
        if tensor.numel() == 0:
            tensor = tensor.reshape(0, *trailing)
        rank, most = dist.get_rank(), max(rows)
        # all_gather moves equal sizes: pad every shard to the largest, then cut the padding off.
        padded = tensor if tensor.size(0) == most else torch.cat([tensor, tensor.new_zeros((most - tensor.size(0), *trailing))])
        parts = [torch.empty_like(padded) for _ in rows]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.rows, ctx.shape = sum(rows[:rank]), rows[rank], tuple(tensor.shape)
        return torch.cat([part[:n] for part, n in zip(parts, rows)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        # Every process used the whole gathered tensor: sum their gradients, keep our rows.
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.start:ctx.start + ctx.rows].reshape(ctx.shape), None


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Differentiable sum over processes (identity in a single process)."""
    return _AllReduceSum.apply(tensor) if is_distributed() else tensor


def all_gather_cat(tensor: Tensor, rows: Optional[Sequence[int]] = None) -> Tensor:
    """Differentiable concatenation over processes along dim 0, in rank order; shards may
    have different sizes (identity in a single process). ``rows``, every process's row count
    when the caller knows them, spares an exchange of shapes that waits on the device."""
    if not is_distributed():
        return tensor
    return _AllGatherCat.apply(tensor, None if rows is None else [int(n) for n in rows])


class GlobalBatchNorm(_BatchNorm):
    r"""Batch normalisation whose training statistics cover the whole global batch.

    .. math::
        \mu = \frac{\sum_p \sum_{i \in p} x_i}{\sum_p n_p}, \qquad
        \sigma^2 = \frac{\sum_p \sum_{i \in p} (x_i - \mu)^2}{\sum_p n_p}

    with the sums reduced over processes (differentiably), in float32 (float64 for float64
    inputs) and outside autocast. The two-pass variance stays exact when the mean is large
    against the spread, where :math:`E[x^2] - \mu^2` cancels. Identical to
    ``torch.nn.BatchNorm{1,2}d`` in a single process or in evaluation mode; works with gloo on
    CPU (``torch.nn.SyncBatchNorm`` needs CUDA). Accepts :math:`(N, C)`, :math:`(N, C, L)`
    and :math:`(N, C, H, W)` inputs; a process may hold no rows.

    Shapes:
        - **input:** :math:`(N, C, *)`
        - **output:** :math:`(N, C, *)`, the input's dtype
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and is_distributed()):
            return super().forward(input)
        with torch.autocast(input.device.type, enabled=False):
            return self._global_forward(input).to(input.dtype)

    def _global_forward(self, input: Tensor) -> Tensor:
        x = input.double() if input.dtype == torch.float64 else input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # A fill, not torch.tensor(value, device=...): that copies from the host and waits for the GPU.
        count = all_reduce_sum(torch.full((), float(x.numel() // x.size(1)), dtype=x.dtype, device=x.device))
        mean = all_reduce_sum(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach().to(self.running_mean.dtype))
                unbiased = var.detach() * count / (count - 1).clamp_min(1.0)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
                self.num_batches_tracked.add_(1)
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape).to(x.dtype) + self.bias.view(shape).to(x.dtype)
        return out


class GlobalBatchNormAct(GlobalBatchNorm):
    """:class:`GlobalBatchNorm` followed by the dropout and activation of timm's
    ``BatchNormAct2d`` (which fuses them into the norm layer), as timm's ``SyncBatchNormAct``."""

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(input)))


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces every ``BatchNorm{1,2,3}d`` in ``module`` (timm's ``BatchNormAct2d`` too, keeping
    its activation) by :class:`GlobalBatchNorm`, keeping parameters, running statistics and
    training mode. On CUDA, ``timm.layers.convert_sync_batchnorm`` (``SyncBatchNorm``) does the same."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        fused = hasattr(module, "act") and hasattr(module, "drop")  # timm's BatchNormAct2d
        cls = GlobalBatchNormAct if fused else GlobalBatchNorm
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if fused:
            new.act, new.drop = module.act, module.drop
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        new.to(next(module.buffers(), torch.empty(0)).device)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
