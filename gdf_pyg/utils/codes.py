r"""Binary codes: the one binarisation rule and the one Hamming-distance formula of the package.

Codes are :math:`\{-1, +1\}^K`; a relaxed code becomes binary by
:math:`\operatorname{sign}` with :math:`0 \mapsto +1`, and two binary codes differ in
:math:`d(\mathbf{q}, \mathbf{b}) = (K - \mathbf{q}^\top\mathbf{b}) / 2` bits.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["binarize", "check_binary", "hamming_from_inner"]


def binarize(codes: Tensor) -> Tensor:
    r"""Binary codes :math:`\operatorname{sign}(\mathbf{h}) \in \{-1, +1\}`, with :math:`0 \mapsto +1`,
    in the dtype of ``codes``."""
    return torch.where(codes >= 0, torch.ones_like(codes), -torch.ones_like(codes))


def check_binary(codes: Tensor, name: str) -> Tensor:
    """``codes`` as float32 after checking that every entry is -1 or +1.

    Relaxed (real-valued) codes are refused rather than binarised silently: pass them
    through :func:`binarize` first.
    """
    if codes.dim() != 2:
        raise ValueError(f"{name} must have shape (items, bits), got {tuple(codes.shape)}")
    values = codes.to(torch.float32)
    bad = (values != 1) & (values != -1)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} must hold binary codes in {{-1, +1}}; entry ({row}, {col}) is {codes[row, col].item()!r}. "
            "Binarise relaxed codes explicitly with gdf_pyg.binarize"
        )
    return values


def hamming_from_inner(inner: Tensor, bits: int) -> Tensor:
    r"""Hamming distances from the inner products of :math:`\{-1, +1\}` codes of ``bits`` bits
    (exact integers, int32)."""
    return ((bits - inner) * 0.5).round().to(torch.int32)
