r"""Multi-process training with PyTorch DDP (``torchrun``): gloo on CPU, nccl on GPU.

Every process sees the same seeded order of the data and takes its own contiguous shard of
each global batch (``optim.batch_size`` is the global batch). The losses are computed on the
outputs gathered from every process and batch normalisation uses global statistics
(:mod:`gdf_pyg.nn.sync`), so :math:`W` processes compute the gradients of one process on
the whole global batch, also when shards differ in size (skipped images, an uneven last
batch). Every process takes part in every collective; evaluation is sharded across processes
and gathered, so no process waits inside a collective while another works alone.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ..nn.sync import all_gather_cat, is_distributed

log = logging.getLogger(__name__)

__all__ = ["DistContext", "all_true", "barrier", "close_distributed", "every_process", "from_main", "gather_rows",
           "init_distributed", "is_distributed", "main_first", "process_seed"]


@dataclass
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this library created the process group, so it also destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, items: int, rank: Optional[int] = None) -> slice:
        """This process's (or ``rank``'s) contiguous share of ``items`` (sizes differ by at most one)."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(items, self.world_size)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (rank < extra))


def init_distributed(device: torch.device) -> DistContext:
    """Joins the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def close_distributed(ctx: DistContext) -> None:
    """Destroys the process group that :func:`init_distributed` created (a group the caller
    created stays). Left to the interpreter's exit, gloo's threads can still be running when
    the process tears down, and the process aborts ("terminate called without an active
    exception") after a run that succeeded."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Waits for every process (nothing in a single process)."""
    if ctx.active:
        dist.barrier()


def all_true(flag: bool, ctx: DistContext) -> bool:
    """Whether ``flag`` holds on every process (each decides from what it sees, such as its own
    disk; all get the same answer, so none skips work the others wait for)."""
    if not ctx.active:
        return bool(flag)
    on_gpu = dist.get_backend() == "nccl"  # nccl reduces only tensors on the process's GPU
    value = torch.tensor([int(bool(flag))], device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else None)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def from_main(value: Any, ctx: DistContext) -> Any:
    """The main process's ``value``, on every process (what the main process read from its disk,
    sent to processes of other machines, which may not see the file)."""
    if not ctx.active:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def every_process(value: Any, ctx: DistContext) -> List[Any]:
    """Every process's ``value``, in rank order, on every process."""
    if not ctx.active:
        return [value]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def process_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s own generators (dropout, anything drawn per process): the
    run's seed on the main process, so one process draws as a single-process run does."""
    return seed if rank == 0 else (seed * 1_000_003 + rank) % (2**63 - 1)


@contextlib.contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """The block runs on the main process first, then on the others (who wait for it): for work
    whose result the others read, such as a folder split written to disk or a file cache."""
    if not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.is_main:
        barrier(ctx)


def gather_rows(tensors: List[Tensor], device: Optional[torch.device] = None) -> List[Tensor]:
    """Each tensor concatenated over processes in rank order (shards of any size), on the CPU."""
    if not is_distributed():
        return [t.cpu() for t in tensors]
    with torch.no_grad():
        return [all_gather_cat(t.to(device) if device is not None else t).cpu() for t in tensors]
