r"""The semantic hash layer: image features to relaxed K-bit codes and class logits."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

__all__ = ["HASH_INPUTS", "HashHead", "HashOutput"]

HASH_INPUTS = ("features", "posterior")


class HashOutput(NamedTuple):
    """What :meth:`HashHead.forward` returns.

    Attributes:
        codes: relaxed codes :math:`(B, K)` in :math:`(-1, 1)`.
        logits: the code classifier's class scores :math:`(B, C)`.
        class_logits: with ``hash_input="posterior"``, the scores of the class classifier whose
            posterior the hash layer reads :math:`(B, C)`; otherwise ``None``.
    """

    codes: Tensor
    logits: Tensor
    class_logits: Optional[Tensor] = None


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

    With ``hash_input="posterior"`` a class classifier on what the hash layer would read
    (:math:`\mathbf{x}`: :math:`\mathrm{dropout}(\mathrm{BN}(\mathbf{f}))`, or the hidden layer's output)
    decides first, and the hash layer reads its posterior:

    .. math::
        \mathbf{u} = \mathbf{W}_p\,\mathbf{x} + \mathbf{b}_p, \qquad
        \mathbf{h} = \tanh\big(s\,(\mathbf{W}_h \operatorname{softmax}(\mathbf{u}) + \mathbf{b}_h)\big)

    With ``similarity_bits`` :math:`K_s > 0` the last :math:`K_s` bits (all of them with
    :math:`K_s = K`) also read the features through hyperplanes of their own, trained to keep the
    backbone's similarities (:func:`~gdf_pyg.nn.losses.similarity_preserving_loss`,
    ``loss.similarity``):

    .. math::
        \mathbf{h} = \tanh\big(\mathbf{a} + [\,\mathbf{0}_{K - K_s} \;\|\; \mathbf{W}_s\,\mathbf{x}\,]\big)

    with :math:`\mathbf{a}` the pre-activation above. On a posterior head a confident prediction of a
    trained class still gives its class's code; a photo of a class never trained on, whose posterior
    spreads over the trained classes it resembles, keeps in those bits the neighbourhoods the
    backbone gives it, where class bits alone map it onto the nearest trained class.

    Column :math:`c` of :math:`\mathbf{W}_h` (:math:`K \times C`) is then class :math:`c`'s
    learned code: a confident prediction of class :math:`c` gives
    :math:`\tanh(s\,(\mathbf{W}_{h,:c} + \mathbf{b}_h))`, an uncertain one a posterior-weighted mix of
    class codes. The code is decided by a classifier of the full feature width instead of
    :math:`K` hyperplanes, so a short code is as accurate a class label as a long one; the code
    classifier :math:`\mathbf{z}` keeps the classes' codes apart, and :math:`\mathbf{u}` is
    trained with its own cross-entropy (``class_logits``). The posterior sums to one, so a code's
    pre-activation starts at the size of one weight (about :math:`1/\sqrt{C}`) and grows by the
    optimiser's steps; the scale :math:`s` (``posterior_scale``) lets the codes reach
    :math:`\pm 1` in :math:`1/s` of the steps. Images of classes never seen in training get
    (mixes of) the training classes' codes (``benchmarks/unseen_classes.py`` measures the cost).

    The batch normalisation standardises each feature over the batch, so the hash layer
    sees the differences between images whatever the scale and the shared offset of the
    features (globally pooled features of a frozen backbone are nearly constant across
    images until standardised).

    Args:
        in_channels (int): feature width :math:`D`.
        bits (int): code length :math:`K`.
        num_classes (int): number of classes :math:`C`.
        dropout (float): dropout on the normalised features. (default: :obj:`0.0`)
        hidden_channels (int): width :math:`H` of the hidden layer, 0 for none. (default: :obj:`0`)
        hash_input (str): what the hash layer reads, ``"features"`` or ``"posterior"``.
            (default: :obj:`"features"`)
        posterior_scale (float): :math:`s`, with ``hash_input="posterior"``. (default: :obj:`3.0`)
        similarity_bits (int): :math:`K_s`, the code's last bits that also keep the backbone's
            similarities, :math:`0 \le K_s \le K`. (default: :obj:`0`)

    Shapes:
        - **input:** features :math:`(B, D)`
        - **output:** :class:`HashOutput`: codes :math:`(B, K)`, logits :math:`(B, C)`, class
          logits :math:`(B, C)` or ``None``
    """

    def __init__(self, in_channels: int, bits: int, num_classes: int, dropout: float = 0.0,
                 hidden_channels: int = 0, hash_input: str = "features", posterior_scale: float = 3.0,
                 similarity_bits: int = 0) -> None:
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be a positive integer, got {bits}")
        if hidden_channels < 0:
            raise ValueError(f"hidden_channels must be >= 0 (0: a linear hash layer), got {hidden_channels}")
        if hash_input not in HASH_INPUTS:
            raise ValueError(f"hash_input must be one of {HASH_INPUTS}, got {hash_input!r}")
        if posterior_scale <= 0:
            raise ValueError(f"posterior_scale must be > 0, got {posterior_scale}")
        if not 0 <= similarity_bits <= bits:
            raise ValueError(f"similarity_bits must be in [0, bits] = [0, {bits}], got {similarity_bits}")
        self.in_channels, self.bits, self.num_classes = in_channels, bits, num_classes
        self.similarity_bits = similarity_bits
        self.hidden_channels, self.hash_input, self.posterior_scale = hidden_channels, hash_input, posterior_scale
        self.norm = nn.BatchNorm1d(in_channels)
        self.dropout = nn.Dropout(dropout)
        # No hidden layer, no extra module: linear heads keep the state dict of earlier versions.
        self.hidden = (nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.BatchNorm1d(hidden_channels), nn.ReLU())
                       if hidden_channels else None)
        width = hidden_channels or in_channels
        self.class_classifier = nn.Linear(width, num_classes) if hash_input != "features" else None
        self.hash = nn.Linear(num_classes if self.class_classifier is not None else width, bits)
        # no bias: the class code sets each bit's offset
        self.similarity = nn.Linear(width, similarity_bits, bias=False) if similarity_bits else None
        self.classifier = nn.Linear(bits, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        if self.hidden is not None:
            self.hidden[0].reset_parameters()
            self.hidden[1].reset_parameters()
        if self.class_classifier is not None:
            self.class_classifier.reset_parameters()
        if self.similarity is not None:
            self.similarity.reset_parameters()
        self.hash.reset_parameters()
        self.classifier.reset_parameters()

    @property
    def class_bits(self) -> int:
        """The bits that code the classes alone (the first ones); the rest also keep the backbone's similarities."""
        return self.bits - self.similarity_bits

    def forward(self, features: Tensor) -> HashOutput:
        x = self.dropout(self.norm(features))
        if self.hidden is not None:
            x = self.hidden(x)
        class_logits = None
        if self.class_classifier is None:
            pre = self.hash(x)
        else:
            class_logits = self.class_classifier(x)
            pre = self.posterior_scale * self.hash(torch.softmax(class_logits, dim=1))
        if self.similarity is not None:
            pre = torch.cat([pre[:, :self.class_bits], pre[:, self.class_bits:] + self.similarity(x)], dim=1)
        codes = torch.tanh(pre)
        return HashOutput(codes, self.classifier(codes), class_logits)

    def __repr__(self) -> str:
        hidden = f", hidden_channels={self.hidden_channels}" if self.hidden_channels else ""
        source = (f", hash_input={self.hash_input!r}, posterior_scale={self.posterior_scale:g}"
                  if self.class_classifier is not None else "")
        similarity = f", similarity_bits={self.similarity_bits}" if self.similarity_bits else ""
        return (f"{self.__class__.__name__}({self.in_channels}, bits={self.bits}, num_classes={self.num_classes}"
                f"{hidden}{source}{similarity})")
