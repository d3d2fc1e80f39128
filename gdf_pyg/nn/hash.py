r"""The semantic hash layer: image features to relaxed K-bit codes and class logits."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

__all__ = ["HashHead"]


class HashHead(nn.Module):
    r"""Semantic hash layer and the classifier on its codes.

    .. math::
        \mathbf{h} = \tanh\big(\mathbf{W}_h\,\mathrm{dropout}(\mathrm{BN}(\mathbf{f})) + \mathbf{b}_h\big), \qquad
        \mathbf{z} = \mathbf{W}_c\,\mathbf{h} + \mathbf{b}_c

    The batch normalisation standardises each feature over the batch, so the hash layer
    sees the differences between images whatever the scale and the shared offset of the
    features (globally pooled features of a frozen backbone are nearly constant across
    images until standardised).

    Shapes:
        - **input:** features :math:`(B, D)`
        - **output:** codes :math:`(B, K)`, logits :math:`(B, C)`
    """

    def __init__(self, in_channels: int, bits: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be a positive integer, got {bits}")
        self.in_channels, self.bits, self.num_classes = in_channels, bits, num_classes
        self.norm = nn.BatchNorm1d(in_channels)
        self.dropout = nn.Dropout(dropout)
        self.hash = nn.Linear(in_channels, bits)
        self.classifier = nn.Linear(bits, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.hash.reset_parameters()
        self.classifier.reset_parameters()

    def forward(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        codes = torch.tanh(self.hash(self.dropout(self.norm(features))))
        return codes, self.classifier(codes)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, bits={self.bits}, num_classes={self.num_classes})"
