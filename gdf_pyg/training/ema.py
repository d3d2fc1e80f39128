r"""An exponential moving average of a model's weights (``optim.ema_decay``).

After optimizer step :math:`t` (counted from 1) every trained weight and every floating-point
buffer (batch-norm statistics) of the average moves towards the model's:

.. math::
    \bar{\theta}_t = \beta_t \, \bar{\theta}_{t-1} + (1 - \beta_t) \, \theta_t, \qquad
    \beta_t = \min\Big(\beta, \frac{1 + t}{10 + t}\Big)

with :math:`\bar{\theta}_0 = \theta_0`. The warm-up of :math:`\beta_t` (as in timm's
``ModelEmaV3``) keeps the first epochs' average from being dominated by the initial weights.
Integer buffers (batch counts) are copied; weights that do not train (a frozen backbone) are
left alone. The average is what validation, model selection and the saved model see: it
smooths the epoch-to-epoch noise of the selected weights.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from ..engine.checkpoint import state_dict_cpu

__all__ = ["WeightAverage"]


class WeightAverage:
    r"""The exponential moving average of ``model``'s weights; see the module docstring.

    Args:
        model (nn.Module): the model being trained; its weights at construction start the average,
            and the weights that train are those with ``requires_grad`` then.
        decay (float): :math:`\beta \in (0, 1)`, the decay after the warm-up.

    ``module`` is a copy of ``model`` that holds the average (use it in ``eval()`` mode).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay, self.updates = float(decay), 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._averaged, self._copied = self._pairs(model)

    def _pairs(self, model: nn.Module) -> Tuple[List[Tuple[Tensor, Tensor]], List[Tuple[Tensor, Tensor]]]:
        """``(average, source)`` tensors: those averaged and those copied."""
        own_params, own_buffers = dict(self.module.named_parameters()), dict(self.module.named_buffers())
        averaged = [(own_params[n], p) for n, p in model.named_parameters() if p.requires_grad]
        copied = []
        for n, b in model.named_buffers():
            (averaged if b.is_floating_point() else copied).append((own_buffers[n], b))
        return averaged, copied

    def decay_at(self, update: int) -> float:
        r""":math:`\beta_t` of update ``t`` (from 1)."""
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self) -> None:
        """Moves the average towards the model's current weights (after an optimizer step)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        if self._averaged:
            mine, theirs = zip(*self._averaged)
            torch._foreach_lerp_(list(mine), [t.detach() for t in theirs], weight)
        for mine, theirs in self._copied:
            mine.copy_(theirs)

    def state_dict(self) -> Dict[str, Any]:
        """The average's weights and its update count, as plain data."""
        return {"updates": self.updates, "module": state_dict_cpu(self.module)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(decay={self.decay}, updates={self.updates})"
