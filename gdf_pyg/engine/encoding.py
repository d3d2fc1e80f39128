"""Encoding datasets with a model: codes or backbone features, batch by batch, in float32.

Training's evaluation, ``gdf-pyg eval`` and ``gdf-pyg index`` all encode through
:func:`encode_dataset`, in the same batches and the same precision, so the codes a run reports
are the codes it deploys. Several processes share the batches and gather the results.
The frozen-backbone feature cache keeps the batch of each row, so codes computed from cached
features (:func:`encode_cached`) replay exactly the batches of encoding from images.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.loading import SeededItems, item_seed, loader_options
from ..data.records import collate_skipping_bad
from ..utils.progress import Progress, no_progress
from .amp import full_float32
from .checkpoint import save_checkpoint
from .distributed import DistContext, gather_rows

log = logging.getLogger(__name__)

__all__ = ["EncodedSet", "ImageEncoder", "encode_cached", "encode_dataset", "load_feature_cache", "readable_batches",
           "save_feature_cache"]


@dataclass
class EncodedSet:
    """Values (codes or feature maps) of the readable items of a dataset.

    ``positions`` are the items' positions in the dataset, ``batches`` the encoding batch each
    row came from (rows of one batch were computed together).
    """

    values: Tensor
    positions: Tensor
    batches: Tensor

    def select(self, keep: Tensor) -> "EncodedSet":
        return EncodedSet(self.values[keep], self.positions[keep], self.batches[keep])

    def to_device(self, device: torch.device) -> "EncodedSet":
        """The values on a GPU (``positions`` and ``batches`` stay on the host) when they take at
        most half its free memory, else in pinned host memory for asynchronous copies; on the CPU,
        unchanged. Training from cached maps then gathers each batch where it is trained."""
        if device.type != "cuda" or self.values.is_cuda:
            return self
        size = self.values.numel() * self.values.element_size()
        free, _ = torch.cuda.mem_get_info(device)
        if size <= free // 2:
            return EncodedSet(self.values.to(device), self.positions, self.batches)
        log.info("cached values (%.1f GB) stay in pinned host memory: more than half the GPU's free memory", size / 1e9)
        return EncodedSet(self.values.pin_memory(), self.positions, self.batches)


def readable_batches(loader: DataLoader, skipped: Optional[List[str]], paths: Optional[Sequence[str]] = None
                     ) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
    """``(images, labels, positions)`` of a loader over a skip-bad dataset; images skipped as
    unreadable are logged and appended to ``skipped``. A batch of unreadable images only is
    yielded empty, so every process sees the same number of batches."""
    for images, labels, indices, bad in loader:
        for i in bad:
            path = paths[i] if paths is not None else f"item {i}"
            log.warning("skipped unreadable image %s", path)
            if skipped is not None:
                skipped.append(path)
        yield images, labels, indices


def _batch_plan(n: int, batch_size: int, ctx: DistContext) -> Tuple[List[List[int]], int]:
    """This process's share of the batches ``[0, B), [B, 2B), ...`` and the first one's number."""
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    share = ctx.shard(len(batches))
    return batches[share], share.start


def _to_host(values: List[Tensor], device: torch.device) -> Tensor:
    """The rows computed on ``device``, concatenated on the host. From a GPU each batch was copied
    without waiting (into pinned memory); one synchronisation here makes them all valid."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return torch.cat(values) if values else torch.empty(0)


def _from_device(out: Tensor) -> Tensor:
    """A batch's result copied to the host without waiting for it (:func:`_to_host` waits once)."""
    return out.to("cpu", non_blocking=True) if out.is_cuda else out


class ImageEncoder:
    """Encodes one dataset, as often as asked, through one DataLoader whose workers persist
    between calls (validation every few epochs does not start them again).

    Args: as :func:`encode_dataset`; ``persistent=False`` stops the workers after each call.
    """

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, *, ctx: Optional[DistContext] = None,
                 num_workers: int = 0, paths: Optional[Sequence[str]] = None, persistent: bool = True,
                 seed: Optional[int] = None) -> None:
        self.dataset, self.device, self.ctx, self.paths = dataset, device, ctx or DistContext(), paths
        self.plan, self.first = _batch_plan(len(dataset), batch_size, self.ctx)
        batches: Sequence[Sequence[Any]] = self.plan
        if seed is not None:  # random transforms: each item drawn from its own seed, whatever the workers
            dataset = SeededItems(dataset)
            batches = [[(i, item_seed(seed, 0, i)) for i in batch] for batch in self.plan]
        self.loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_skipping_bad,
                                 **loader_options(num_workers, device, persistent))

    def __call__(self, fn: Callable[[Tensor], Tensor], *, progress: Progress = no_progress, desc: str = "encode",
                 skipped: Optional[List[str]] = None) -> EncodedSet:
        start, device = time.perf_counter(), self.device
        values, positions, batches, mine = [], [], [], []
        for b, (images, _, indices) in enumerate(progress(readable_batches(self.loader, mine, self.paths), desc=desc,
                                                          total=len(self.plan)), start=self.first):
            if images is None:
                continue
            with torch.inference_mode(), full_float32():
                values.append(_from_device(fn(images.to(device, non_blocking=True)).float()))
            positions.append(indices)
            batches.append(torch.full((len(indices),), b, dtype=torch.long))
        local = [_to_host(values, device),
                 torch.cat(positions) if positions else torch.empty(0, dtype=torch.long),
                 torch.cat(batches) if batches else torch.empty(0, dtype=torch.long)]
        out = EncodedSet(*gather_rows(local, device if device.type == "cuda" else None))
        if skipped is not None:
            skipped.extend(_gather_paths(mine, self.ctx))
        if len(out.values) == 0:
            raise RuntimeError(f"{desc}: no readable image in the dataset")
        seconds = time.perf_counter() - start
        log.info("%s: %d images in %.1f s (%.0f images/s)", desc, len(out.values), seconds, len(out.values) / seconds)
        return out


def encode_dataset(
    fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    *,
    ctx: Optional[DistContext] = None,
    num_workers: int = 0,
    progress: Progress = no_progress,
    desc: str = "encode",
    skipped: Optional[List[str]] = None,
    paths: Optional[Sequence[str]] = None,
    seed: Optional[int] = None,
) -> EncodedSet:
    """Applies ``fn`` (images on ``device`` -> tensor) to every readable image, in batches of
    ``batch_size`` in dataset order, in float32 and inference mode.

    With several processes (``ctx``) each encodes a contiguous share of the batches and every
    process receives all rows; unreadable images (``skip_bad`` datasets) of every process are
    appended to ``skipped``. On a GPU the batches queue without waiting for each other's results,
    in true float32 (no TF32). ``seed``: a dataset with random transforms draws each image's from
    a seed of its own (``seed`` and its position), so the result does not depend on the workers.
    """
    encoder = ImageEncoder(dataset, batch_size, device, ctx=ctx, num_workers=num_workers, paths=paths,
                           persistent=False, seed=seed)
    return encoder(fn, progress=progress, desc=desc, skipped=skipped)


def _gather_paths(paths: List[str], ctx: DistContext) -> List[str]:
    if not ctx.active:
        return paths
    every: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(every, paths)
    return [p for part in every for p in part]


def encode_cached(fn: Callable[[Tensor], Tensor], cached: EncodedSet, device: torch.device,
                  ctx: Optional[DistContext] = None, chunk: Optional[int] = None) -> EncodedSet:
    """Applies ``fn`` to cached rows in float32: batch by batch, in the batches they were encoded
    in (so the result equals encoding the images with the backbone and ``fn`` together), or in
    chunks of ``chunk`` rows where only a model selection depends on it (faster, and equal up to
    float rounding). The cached rows may lie on the host or on ``device``."""
    ctx = ctx or DistContext()
    if chunk is None:
        # Rows of one batch are contiguous (encoded in order): the batches' boundaries, on the host.
        ids = cached.batches.numpy()
        bounds = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
        groups = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    else:
        groups = [(a, min(a + chunk, len(cached.values))) for a in range(0, len(cached.values), chunk)]
    values, keep = [], []
    for a, b in groups[ctx.shard(len(groups))]:
        with torch.inference_mode(), full_float32():
            values.append(_from_device(fn(cached.values[a:b].to(device, non_blocking=True)).float()))
        keep.append(torch.arange(a, b))
    rows = torch.cat(keep) if keep else torch.empty(0, dtype=torch.long)
    local = _to_host(values, device)
    gathered_values, gathered_rows = gather_rows([local, rows], device if device.type == "cuda" else None)
    return EncodedSet(gathered_values, cached.positions[gathered_rows], cached.batches[gathered_rows])


# --------------------------------------------------------------------------------------
# Frozen-backbone feature cache.
# --------------------------------------------------------------------------------------
def cache_key(identity: Dict[str, Any]) -> str:
    """A short hash of everything that decides the cached features."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def load_feature_cache(path: Path) -> Optional[Tuple[Dict[str, EncodedSet], List[str]]]:
    """The cached feature maps of each set (``train``, ``test``, or views) and the images
    skipped when they were computed."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    log.info("reusing cached backbone features %s", path)
    sets = {k: EncodedSet(v["values"], v["positions"], v["batches"]) for k, v in state.items()
            if isinstance(v, dict)}  # beside the sets: "skipped" and the checkpoint format
    return sets, list(state.get("skipped", []))


def save_feature_cache(path: Path, sets: Dict[str, EncodedSet], skipped: List[str]) -> None:
    state: Dict[str, Any] = {k: {"values": v.values, "positions": v.positions, "batches": v.batches}
                             for k, v in sets.items()}
    state["skipped"] = skipped
    save_checkpoint(state, path)
    log.info("cached backbone features in %s", path)
