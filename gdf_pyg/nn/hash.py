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

    With ``hidden_channels`` :math:`H > 0` the features first pass one hidden layer,
    :math:`\mathbf{f} \leftarrow \mathrm{ReLU}(\mathrm{BN}(\mathbf{W}_1\,\mathrm{dropout}(\mathrm{BN}(\mathbf{f}))))`, and
    :math:`\mathbf{W}_h` maps :math:`H` channels. A linear hash layer can only give each bit a
    hyperplane of the features, so a short code must find class clusters that :math:`K`
    hyperplanes split into distinct cells; the hidden layer lets each bit be any function of
    the class scores, which short codes need most.

    The batch normalisation standardises each feature over the batch, so the hash layer
    sees the differences between images whatever the scale and the shared offset of the
    features (globally pooled features of a frozen backbone are nearly constant across
    images until standardised).

    Shapes:
        - **input:** features :math:`(B, D)`
        - **output:** codes :math:`(B, K)`, logits :math:`(B, C)`
    """

    def __init__(self, in_channels: int, bits: int, num_classes: int, dropout: float = 0.0,
                 hidden_channels: int = 0) -> None:
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be a positive integer, got {bits}")
        if hidden_channels < 0:
            raise ValueError(f"hidden_channels must be >= 0 (0: a linear hash layer), got {hidden_channels}")
        self.in_channels, self.bits, self.num_classes = in_channels, bits, num_classes
        self.hidden_channels = hidden_channels
        self.norm = nn.BatchNorm1d(in_channels)
        self.dropout = nn.Dropout(dropout)
        # No hidden layer, no extra module: linear heads keep the state dict of earlier versions.
        self.hidden = (nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.BatchNorm1d(hidden_channels), nn.ReLU())
                       if hidden_channels else None)
        self.hash = nn.Linear(hidden_channels or in_channels, bits)
        self.classifier = nn.Linear(bits, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        if self.hidden is not None:
            self.hidden[0].reset_parameters()
            self.hidden[1].reset_parameters()
        self.hash.reset_parameters()
        self.classifier.reset_parameters()

    def forward(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        x = self.dropout(self.norm(features))
        if self.hidden is not None:
            x = self.hidden(x)
        codes = torch.tanh(self.hash(x))
        return codes, self.classifier(codes)

    def __repr__(self) -> str:
        hidden = f", hidden_channels={self.hidden_channels}" if self.hidden_channels else ""
        return f"{self.__class__.__name__}({self.in_channels}, bits={self.bits}, num_classes={self.num_classes}{hidden})"
