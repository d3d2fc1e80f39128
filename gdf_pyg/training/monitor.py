"""Watching training steps without stalling them: loss terms summed on the device, read back and
checked for NaN and inf once per interval (``train.log_every`` steps) instead of after every step.

On a GPU each read of a device value makes the host wait until every queued kernel has run; a
training loop that reads its losses after each step (to log them, or to check them) runs the card
one step at a time with gaps between. :class:`StepMonitor` keeps each step's terms where they
were computed and reads them all at once: one wait per interval, and the step that first went
non-finite is still known exactly.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["StepMonitor", "all_finite"]


def all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """A 0-d boolean tensor on the tensors' device: whether every entry of every tensor is finite
    (nothing is read back; their total norm is finite exactly when every entry is)."""
    if not tensors:
        return torch.tensor(True)
    norms = torch._foreach_norm([t.detach() for t in tensors])
    return torch.isfinite(torch.stack([n.float() for n in norms]).sum())


class StepMonitor:
    """The loss terms of the steps since the last read, kept on the device.

    :meth:`add` costs a stack and an add per step; :meth:`read` returns the terms' sums, every
    step's total loss (to name the first non-finite one) and whether the trained weights are all
    finite, in one transfer.
    """

    def __init__(self) -> None:
        self.keys: Optional[List[str]] = None
        self.sums: Optional[Tensor] = None
        self.losses: List[Tensor] = []
        self.first_step = 0

    def __len__(self) -> int:
        return len(self.losses)

    def add(self, terms: Dict[str, Tensor], step: int) -> None:
        """Adds the terms of step ``step`` (counted from 1 over the whole run)."""
        if self.keys is None:
            self.keys = list(terms)
        if not self.losses:
            self.first_step = step
        values = torch.stack([terms[k].detach().float() for k in self.keys])
        self.sums = values if self.sums is None else self.sums + values
        self.losses.append(values[self.keys.index("loss")])

    def read(self, weights: Sequence[Tensor]) -> Tuple[Dict[str, float], List[float], bool]:
        """``(sums of the terms, each step's loss, whether every weight is finite)``."""
        if self.sums is None or self.keys is None:
            return {}, [], bool(all_finite(weights))
        finite = all_finite(weights).to(self.sums.device, torch.float32).view(1)
        flat = torch.cat([self.sums, torch.stack(self.losses), finite]).tolist()
        n = len(self.keys)
        return dict(zip(self.keys, flat[:n])), flat[n:-1], flat[-1] == 1.0

    def reset(self) -> None:
        """Starts a new interval."""
        self.sums, self.losses = None, []
