"""Cheap comparisons of model variants on cached backbone features (for ablations).

:func:`train_code_lengths` trains one :class:`~gdf_pyg.model.RegionGraphEncoder` shared by a
hash head per code length (their losses summed), for a fixed number of epochs on cached
feature maps, and returns mAP@all per code length (queries = test split, database =
training split). Sharing the encoder makes a comparison of many graph constructions over four
code lengths and several seeds affordable on a CPU; ``gdf-pyg train`` instead trains a
separate model per code length with validation-based selection.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..models.gdfnet import GDFNetConfig, RegionGraphEncoder
from ..nn.hash import HashHead
from ..nn.losses import GDFLoss, LossWeights
from ..retrieval.metrics import mean_average_precision
from ..utils.codes import binarize

log = logging.getLogger(__name__)

__all__ = ["MultiCodeModel", "train_code_lengths"]


class MultiCodeModel(nn.Module):
    """A region-graph encoder with one hash head per code length."""

    def __init__(self, config: GDFNetConfig, channels: int, feature_size: Tuple[int, int], bits: Sequence[int],
                 num_classes: int) -> None:
        super().__init__()
        self.encoder = RegionGraphEncoder(config, channels, feature_size)
        self.heads = nn.ModuleDict({str(b): HashHead(self.encoder.out_channels, b, num_classes) for b in bits})

    def forward(self, fmap: Tensor) -> Dict[int, Tuple[Tensor, Tensor]]:
        features = self.encoder(fmap)
        return {int(b): head(features) for b, head in self.heads.items()}


def train_code_lengths(
    config: GDFNetConfig,
    train_maps: Tensor,
    train_labels: Tensor,
    test_maps: Tensor,
    test_labels: Tensor,
    *,
    bits: Sequence[int] = (12, 24, 32, 48),
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    loss: LossWeights = LossWeights(),
    flip: bool = True,
) -> Dict[str, float]:
    """Trains on ``train_maps`` :math:`(N, C, H, W)` and returns ``{"map@<bits>": ..., "seconds": ...}``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    model = MultiCodeModel(config, train_maps.size(1), tuple(train_maps.shape[-2:]), bits, num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, len(train_maps) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.1)
    loss_fn = GDFLoss(loss)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_maps), generator=generator)
        for s in range(steps):
            idx = order[s * batch_size:(s + 1) * batch_size]
            fmap = train_maps[idx].float()
            if flip:
                mirror = torch.rand(len(idx), generator=generator) < 0.5
                fmap[mirror] = fmap[mirror].flip(-1)
            outputs = model(fmap)
            total = sum(loss_fn(codes, logits, train_labels[idx])["loss"] for codes, logits in outputs.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        encode = lambda maps: [model(maps[i:i + 256].float()) for i in range(0, len(maps), 256)]  # noqa: E731
        db, q = encode(train_maps), encode(test_maps)
    result = {"seconds": time.perf_counter() - t0}
    for b in bits:
        db_codes = binarize(torch.cat([o[b][0] for o in db]))
        q_codes = binarize(torch.cat([o[b][0] for o in q]))
        result[f"map@{b}"] = mean_average_precision(q_codes, db_codes, test_labels, train_labels)
    return result
