r"""Losses for deep hashing with relaxed codes :math:`\mathbf{h} \in [-1, 1]^K`.

All losses take a batch of codes :math:`\mathbf{H} \in \mathbb{R}^{B \times K}` (the
tanh-relaxed output of the hash layer) and return a scalar, averaged over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.checks import require
from .sync import all_gather_cat

__all__ = [
    "GDFLoss",
    "bit_balance_loss",
    "cauchy_distance",
    "cauchy_quantization_loss",
    "code_classification_loss",
    "pairwise_cauchy_loss",
    "similarity_from_labels",
]


def _check_codes(h: Tensor) -> None:
    if not isinstance(h, Tensor) or h.dim() != 2 or h.size(1) < 1:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(f"codes must have shape (batch, bits), got {shape}")


def _check_gamma(gamma: float) -> None:
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}")


def cauchy_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    r"""The normalised Hamming-style distance of Deep Cauchy Hashing.

    .. math:: d(\mathbf{a}, \mathbf{b}) = \frac{K}{2}\big(1 - \cos(\mathbf{a}, \mathbf{b})\big)

    which equals the Hamming distance for :math:`\mathbf{a}, \mathbf{b} \in \{-1, +1\}^K`.
    Broadcasts over leading dimensions; returns shape ``a.shape[:-1]`` (broadcast with ``b``).
    """
    k = a.size(-1)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)
    return 0.5 * k * (1.0 - cos)


def cauchy_quantization_loss(h: Tensor, gamma: float = 20.0) -> Tensor:
    r"""Cauchy quantization loss (Cao et al., "Deep Cauchy Hashing", CVPR 2018).

    .. math::
        \mathcal{L}_Q = \frac{1}{B} \sum_{i=1}^{B}
        \log\Big(1 + \frac{d(|\mathbf{h}_i|, \mathbf{1})}{\gamma}\Big), \qquad
        d(\mathbf{a}, \mathbf{b}) = \frac{K}{2}\big(1 - \cos(\mathbf{a}, \mathbf{b})\big)

    It is zero exactly when every :math:`|h_{ik}|` is equal (the codes are binary up to
    scale) and, unlike the squared loss :math:`\lVert |\mathbf{h}| - \mathbf{1} \rVert^2`,
    saturates for codes far from binary instead of dominating the objective.

    Args:
        h (Tensor): relaxed codes :math:`(B, K)`.
        gamma (float): Cauchy scale :math:`\gamma > 0`. (default: :obj:`20.0`)
    """
    _check_codes(h)
    _check_gamma(gamma)
    d = cauchy_distance(h.abs(), torch.ones_like(h))
    return torch.log1p(d / gamma).mean()


def bit_balance_loss(h: Tensor) -> Tensor:
    r"""Bit-balance loss: each bit should be :math:`+1` on half of the batch.

    .. math::
        \mathcal{L}_B = \frac{1}{K} \sum_{k=1}^{K} \Big(\frac{1}{B}\sum_{i=1}^{B} h_{ik}\Big)^2

    computed on the relaxed codes, so the gradient
    :math:`\partial \mathcal{L}_B / \partial h_{ik} = \frac{2}{BK} \sum_{i'} h_{i'k} / B`
    reaches the network (a version built from :math:`\operatorname{sign}(\mathbf{h})`
    has zero gradient everywhere and does not train).

    Args:
        h (Tensor): relaxed codes :math:`(B, K)`.
    """
    _check_codes(h)
    return h.mean(dim=0).pow(2).mean()


def similarity_from_labels(labels: Tensor, other: Optional[Tensor] = None) -> Tensor:
    r"""Pairwise similarity :math:`s_{ij} \in \{0, 1\}`: 1 when the items share a class.

    ``labels`` is either class indices :math:`(B,)` or multi-hot :math:`(B, C)`.
    """
    other = labels if other is None else other
    if labels.dim() == 1:
        return (labels.unsqueeze(1) == other.unsqueeze(0)).float()
    return ((labels.float() @ other.float().t()) > 0).float()


def pairwise_cauchy_loss(h: Tensor, labels: Tensor, gamma: float = 20.0, eps: float = 1e-6) -> Tensor:
    r"""Pairwise Cauchy cross-entropy of Deep Cauchy Hashing (Cao et al., CVPR 2018).

    With :math:`\sigma(d) = \gamma / (\gamma + d)` the probability that two codes at
    distance :math:`d` are similar, over all ordered pairs :math:`i \ne j` of the batch:

    .. math::
        \mathcal{L}_C = \frac{1}{|\mathcal{S}|} \sum_{i \ne j} w_{ij}\Big[
        s_{ij} \log\Big(1 + \frac{d_{ij}}{\gamma}\Big) +
        (1 - s_{ij}) \log\Big(1 + \frac{\gamma}{d_{ij}}\Big)\Big]

    with :math:`d_{ij} = d(\mathbf{h}_i, \mathbf{h}_j)` (see :func:`cauchy_distance`,
    clamped below by ``eps``), and class-balance weights
    :math:`w_{ij} = |\mathcal{S}| / |\mathcal{S}_1|` for similar and
    :math:`|\mathcal{S}| / |\mathcal{S}_0|` for dissimilar pairs.

    Args:
        h (Tensor): relaxed codes :math:`(B, K)`.
        labels (Tensor): class indices :math:`(B,)` or multi-hot labels :math:`(B, C)`.
        gamma (float): Cauchy scale. (default: :obj:`20.0`)
    """
    _check_codes(h)
    _check_gamma(gamma)
    if labels.size(0) != h.size(0):
        raise ValueError(f"labels has {labels.size(0)} rows for {h.size(0)} codes")
    b = h.size(0)
    if b < 2:
        return h.sum() * 0.0
    s = similarity_from_labels(labels).to(h.dtype)
    d = cauchy_distance(h.unsqueeze(1), h.unsqueeze(0)).clamp_min(eps)
    off_diag = ~torch.eye(b, dtype=torch.bool, device=h.device)
    s, d = s[off_diag], d[off_diag]
    n_pos, n_all = s.sum(), torch.tensor(float(s.numel()), dtype=h.dtype, device=h.device)
    n_neg = n_all - n_pos
    w = torch.where(s > 0, n_all / n_pos.clamp_min(1.0), n_all / n_neg.clamp_min(1.0))
    terms = s * torch.log1p(d / gamma) + (1.0 - s) * torch.log1p(gamma / d)
    return (w * terms).sum() / n_all


def code_classification_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    r"""Cross-entropy of the classifier on the codes,
    :math:`-\frac{1}{B}\sum_i \log \operatorname{softmax}(\mathbf{W}\mathbf{h}_i + \mathbf{c})_{y_i}`."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


@dataclass
class LossWeights:
    """Weights of the terms of :class:`GDFLoss` (0 switches a term off)."""

    classification: float = 1.0
    quantization: float = 0.1
    balance: float = 0.1
    pairwise: float = 0.0
    gamma: float = 20.0
    label_smoothing: float = 0.0

    def validate(self, prefix: str = "loss") -> None:
        require(self.gamma > 0, f"{prefix}.gamma", f"must be > 0, got {self.gamma}")
        for name in ("classification", "quantization", "balance", "pairwise"):
            require(getattr(self, name) >= 0, f"{prefix}.{name}", f"must be >= 0, got {getattr(self, name)}")
        require(0.0 <= self.label_smoothing < 1.0, f"{prefix}.label_smoothing",
                f"must be in [0, 1), got {self.label_smoothing}")


class GDFLoss(nn.Module):
    r"""The GDF-Net training objective on relaxed codes and code logits.

    .. math::
        \mathcal{L} = \lambda_{cls}\,\mathcal{L}_{CE} + \lambda_Q\,\mathcal{L}_Q
        + \lambda_B\,\mathcal{L}_B + \lambda_C\,\mathcal{L}_C

    (:func:`code_classification_loss`, :func:`cauchy_quantization_loss`,
    :func:`bit_balance_loss`, :func:`pairwise_cauchy_loss`). ``forward`` returns a dict
    with the total under ``"loss"`` and each weighted term. Under multi-process training
    every term is computed on the outputs of the whole global batch.
    """

    def __init__(self, weights: Optional[LossWeights] = None) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        _check_gamma(self.weights.gamma)

    def forward(self, codes: Tensor, logits: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        # Under multi-process training every term is computed on the outputs of the whole
        # global batch (gathered, differentiably; shards may differ in size), so each process
        # holds the single-process loss and DDP's averaged gradients are the single-process ones.
        codes, logits, labels = all_gather_cat(codes), all_gather_cat(logits), all_gather_cat(labels)
        w = self.weights
        terms: Dict[str, Tensor] = {}
        if w.classification:
            terms["classification"] = w.classification * code_classification_loss(logits, labels, w.label_smoothing)
        if w.quantization:
            terms["quantization"] = w.quantization * cauchy_quantization_loss(codes, w.gamma)
        if w.balance:
            terms["balance"] = w.balance * bit_balance_loss(codes)
        if w.pairwise:
            terms["pairwise"] = w.pairwise * pairwise_cauchy_loss(codes, labels, w.gamma)
        terms["loss"] = sum(terms.values(), codes.new_zeros(()))
        return terms

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weights})"
