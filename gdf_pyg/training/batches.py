"""The batches a training run steps through: the seeded order of every epoch, each process's part
of each global batch, and the inputs themselves (augmented images, or cached backbone maps).

Every process draws the same seeded permutation, flips and views, so the parts of one global
batch are disjoint and together form it. Each step's image counts of every process are known on
the host before the step runs, so nothing in a step has to ask the device how many images it
holds (see :mod:`gdf_pyg.training.trainer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..data.loading import EpochBatches, SeededItems, loader_options
from ..data.records import collate_skipping_bad
from ..engine.distributed import DistContext
from ..engine.encoding import EncodedSet, readable_batches
from ..utils.checks import ConfigError
from .run_data import RunData

__all__ = ["BatchSettings", "TrainingBatches"]

Shard = Tuple[Tensor, Tensor, Tensor]  # (rows of data.fit_pos, flip, view) of one global batch


@dataclass
class BatchSettings:
    """How the batches are drawn (from a run's ``optim``, ``train`` and ``data`` sections)."""

    batch_size: int
    seed: int
    img_size: int
    num_workers: int = 0
    cached_views: int = 0
    feature_flip: bool = True
    skip_bad_images: bool = False


def _to(array: np.ndarray, device: torch.device) -> Tensor:
    """A host index array as a tensor on ``device`` (copied asynchronously to a GPU)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


class TrainingBatches:
    """``(inputs, labels, sizes)`` of this process for every step of an epoch.

    ``inputs`` are augmented images, or with ``features`` (a frozen backbone) the cached maps of
    the ``train`` split (and its ``view1``, ``view2``, ... augmented views); ``sizes`` are every
    process's image counts in the step, known on the host (``None`` where only loading finds out:
    unreadable images skipped under several processes). ``generator`` draws the epochs' order, and
    is saved and restored with a checkpoint.
    """

    def __init__(self, data: RunData, settings: BatchSettings, device: torch.device, ctx: Optional[DistContext] = None,
                 features: Optional[Dict[str, EncodedSet]] = None) -> None:
        self.data, self.settings, self.device, self.ctx = data, settings, device, ctx or DistContext()
        self.features = features
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.steps_per_epoch = self._steps_per_epoch()
        self._epoch_batches = EpochBatches(settings.seed)
        self._image_loader: Optional[DataLoader] = None
        if features is not None:
            self._cache_index()

    def _steps_per_epoch(self) -> int:
        n_fit, batch = len(self.data.fit_pos), self.settings.batch_size
        if batch > n_fit:
            raise ConfigError(f"optim.batch_size: {batch} is larger than the {n_fit} training images")
        if batch < 2 * self.ctx.world_size:
            raise ConfigError(f"optim.batch_size: the global batch {batch} must give every one of the "
                              f"{self.ctx.world_size} processes at least 2 images")
        return n_fit // batch  # the ragged last batch is dropped: stable batch statistics

    @property
    def frozen(self) -> bool:
        return self.features is not None

    def shards(self) -> List[Shard]:
        """Each global batch of the next epoch: ``(rows, flip, view)``.

        ``rows`` index ``data.fit_pos``; ``view`` picks each image's cached map (0: the plain view;
        always 0 without ``cached_views``, drawn only with them so that runs without keep their
        draws)."""
        bs, views = self.settings.batch_size, self.settings.cached_views
        order = torch.randperm(len(self.data.fit_pos), generator=self.generator)
        flips = torch.rand(len(order), generator=self.generator) < 0.5
        view = (torch.randint(0, views + 1, (len(order),), generator=self.generator) if views and self.frozen
                else torch.zeros(len(order), dtype=torch.long))
        return [(order[s * bs:(s + 1) * bs], flips[s * bs:(s + 1) * bs], view[s * bs:(s + 1) * bs])
                for s in range(self.steps_per_epoch)]

    def planned_sizes(self, shards: List[Shard]) -> List[List[int]]:
        """Images of every process in every step: each process's part of the global batch, less
        the images whose cached maps are missing (unreadable when cached)."""
        parts = [self.ctx.shard(self.settings.batch_size, rank) for rank in range(self.ctx.world_size)]
        full = [p.stop - p.start for p in parts]
        if not (self.frozen and self._missing_rows):
            return [full for _ in shards]
        out = []
        for rows, _, view in shards:
            found = self._cached_row[view.numpy(), rows.numpy()] >= 0
            out.append([int(found[p].sum()) for p in parts])
        return out

    def _cache_index(self) -> None:
        """For each cached set (plain view, then the augmented ones), the row of every training
        image in it (-1: missing, as unreadable), on the host; the sets' maps stay where they lie
        (a run puts them on its GPU: each batch is then gathered where it is trained)."""
        views = range(1, self.settings.cached_views + 1)
        sets = [self.features["train"]] + [self.features[f"view{v}"] for v in views]
        fit = self.data.fit_pos.numpy()
        rows = []
        for feats in sets:
            row_of = np.full(len(self.data.train_labels), -1, dtype=np.int64)
            row_of[feats.positions.numpy()] = np.arange(len(feats.positions))
            rows.append(row_of[fit])
        self._cached_row = np.stack(rows)  # (1 + views, fit images)
        self._missing_rows = bool((self._cached_row < 0).any())
        self._cached_values = [feats.values for feats in sets]
        self._fit_labels = self.data.train_labels[self.data.fit_pos].to(self.device)

    def feature_batches(self, shards: List[Shard]) -> Iterator[Tuple[Tensor, Tensor]]:
        """Cached maps of this process's part of each shard, each image in its drawn view (images
        whose maps are missing left out). Indices are worked out on the host; the maps are
        gathered on the device, with every shape known in advance."""
        mine = self.ctx.shard(self.settings.batch_size)
        first = self._cached_values[0]
        for rows, flip, view in shards:
            rows, flip, view = rows[mine].numpy(), flip[mine].numpy(), view[mine].numpy()
            idx = self._cached_row[view, rows]
            if self._missing_rows:
                keep = idx >= 0
                rows, idx, flip, view = rows[keep], idx[keep], flip[keep], view[keep]
            # In the cache's memory layout (channels-last from the backbone): the layout decides the
            # rounding downstream, so runs without views train exactly as before views existed.
            fmap = torch.empty_like(first[:len(idx)], dtype=torch.float32, device=self.device)
            for v, values in enumerate(self._cached_values):
                at = np.flatnonzero(view == v)
                if len(at) == len(idx):  # one view for the whole batch (always so without views)
                    fmap.copy_(values.index_select(0, _to(idx, values.device)), non_blocking=True)
                elif len(at):
                    picked = values.index_select(0, _to(idx[at], values.device))
                    fmap.index_copy_(0, _to(at, self.device), picked.to(self.device, torch.float32, non_blocking=True))
            if self.settings.feature_flip:
                fmap = torch.where(_to(flip, self.device).view(-1, 1, 1, 1), fmap.flip(-1), fmap)
            yield fmap, self._fit_labels[_to(rows, self.device)]

    def _loader(self) -> DataLoader:
        """One DataLoader for every epoch (its workers persist): each epoch sets its batches."""
        if self._image_loader is None:
            self._image_loader = DataLoader(SeededItems(self.data.train_aug), batch_sampler=self._epoch_batches,
                                            collate_fn=collate_skipping_bad,
                                            **loader_options(self.settings.num_workers, self.device))
        return self._image_loader

    def image_batches(self, epoch: int, shards: List[Shard]) -> Iterator[Tuple[Tensor, Tensor]]:
        """Augmented images of this process's part of each shard (images skipped as unreadable left
        out), each augmented with its own seed (:mod:`gdf_pyg.data.loading`)."""
        mine = self.ctx.shard(self.settings.batch_size)
        self._epoch_batches.set_epoch(epoch, [rows[mine].tolist() for rows, _, _ in shards])
        for images, labels, _ in readable_batches(self._loader(), self.data.skipped, self.data.fit_paths):
            if images is None:  # every image of this shard was unreadable
                size = self.settings.img_size
                images, labels = torch.empty(0, 3, size, size), torch.empty(0, dtype=torch.long)
            yield images, labels

    def epoch(self, epoch: int) -> Iterator[Tuple[Tensor, Tensor, Optional[List[int]]]]:
        """The steps of epoch ``epoch`` (counted from 0): ``(inputs, labels, sizes)``."""
        shards = self.shards()
        planned = self.planned_sizes(shards)
        batches = self.feature_batches(shards) if self.frozen else self.image_batches(epoch, shards)
        may_shrink = not self.frozen and self.settings.skip_bad_images
        for (inputs, labels), sizes in zip(batches, planned):
            if may_shrink:
                sizes = [len(labels)] if not self.ctx.active else None
            yield inputs, labels, sizes
