"""Counting the host round trips of a piece of code, on any device.

On a GPU the host queues work and goes on; an operation whose result the host must see (a
tensor's value read with ``.item()``, ``bool()``, ``int()`` or ``float()``; an output whose
size depends on the data, as from ``nonzero``, a boolean mask, ``unique`` or
``masked_select``) makes it wait until the device has finished everything queued before. Each
such wait empties the queue, and a step with many of them leaves the card idle between kernels.
The same operators run on the CPU, so :func:`count_host_syncs` counts them with
``torch.profiler`` on any machine: the count is what a CUDA run of the same code would wait on.

The training loop marks each step with :data:`STEP_REGION`, so a count over a whole run also
says how many steps it made and how many waits fell inside them.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from torch.profiler import ProfilerActivity, profile, record_function

__all__ = ["EVALUATION_REGION", "HOST_SYNC_OPS", "STEP_REGION", "HostSyncCount", "count_host_syncs",
           "evaluation_region", "step_region"]

# The operators that read a device value back to the host (``aten::_local_scalar_dense`` is what
# ``.item()``, ``bool()``, ``int()`` and ``float()`` of a tensor call) or size their output by it.
HOST_SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::nonzero", "aten::nonzero_static", "aten::unique", "aten::_unique",
    "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim", "aten::masked_select",
})
# Excluded by default: the optimiser's own step (torch's code, not ours) and the data loader's work
# in the main process (host-side by nature: on a GPU it never waits for the device).
DEFAULT_EXCLUDED = ("Optimizer.step", "enumerate(DataLoader)")
STEP_REGION = "gdf_pyg::train_step"
EVALUATION_REGION = "gdf_pyg::evaluate"


def step_region() -> contextlib.AbstractContextManager:
    """Marks one training step for :func:`count_host_syncs` (next to no cost when not profiling)."""
    return record_function(STEP_REGION)


def evaluation_region() -> contextlib.AbstractContextManager:
    """Marks a validation or a final evaluation (codes, then mAP on the host) for
    :func:`count_host_syncs`."""
    return record_function(EVALUATION_REGION)


@dataclass
class HostSyncCount:
    """What :func:`count_host_syncs` found.

    Attributes:
        total: host round trips outside the excluded regions.
        in_steps: those inside training steps (:data:`STEP_REGION`).
        in_evaluation: those inside validations and final evaluations (:data:`EVALUATION_REGION`):
            encoding waits once per call for its codes, and mAP is computed on the host.
        steps: training steps seen.
        by_op: ``total`` by operator.
        sites: with ``with_stack=True``, ``total`` by the innermost frame of this package
            above each (``file(line): function``), to find where they come from.
    """

    total: int = 0
    in_steps: int = 0
    in_evaluation: int = 0
    steps: int = 0
    by_op: Counter = field(default_factory=Counter)
    sites: Counter = field(default_factory=Counter)

    @property
    def per_step(self) -> float:
        """Round trips per training step, everything counted (validation too)."""
        return self.total / max(self.steps, 1)

    @property
    def outside_evaluation_per_step(self) -> float:
        """Round trips per training step, validation and final evaluation left out."""
        return (self.total - self.in_evaluation) / max(self.steps, 1)

    @property
    def in_steps_per_step(self) -> float:
        """Round trips inside the training steps, per step: the steady-state cost."""
        return self.in_steps / max(self.steps, 1)


def _site(event) -> str:
    """The innermost frame of this package above ``event``: Python frames are recorded as events
    of their own (``file(line): function``) or, in older versions, as the operator's stack."""
    node = event
    while node is not None:
        for frame in [node.name, *(node.stack or [])]:
            if "gdf_pyg" in frame:
                return frame
        node = node.cpu_parent
    return "outside gdf_pyg"


@contextlib.contextmanager
def count_host_syncs(exclude: Sequence[str] = DEFAULT_EXCLUDED, with_stack: bool = False) -> Iterator[HostSyncCount]:
    """Counts the operators of :data:`HOST_SYNC_OPS` run inside the ``with`` block, leaving out
    those under a profiler region whose name starts with one of ``exclude``. The result is
    filled in when the block ends."""
    result = HostSyncCount()
    with profile(activities=[ProfilerActivity.CPU], with_stack=with_stack) as prof:
        yield result
    for event in prof.events():
        if event.name == STEP_REGION:
            result.steps += 1
            continue
        if event.name not in HOST_SYNC_OPS:
            continue
        regions, skip = set(), False
        parent = event.cpu_parent
        while parent is not None:
            skip = skip or any(parent.name.startswith(name) for name in exclude)
            regions.add(parent.name)
            parent = parent.cpu_parent
        if skip:
            continue
        result.total += 1
        result.in_steps += STEP_REGION in regions
        result.in_evaluation += EVALUATION_REGION in regions
        result.by_op[event.name] += 1
        if with_stack:
            result.sites[_site(event)] += 1

