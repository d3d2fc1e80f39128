"""Image records, splits and the dataset that reads them."""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .transforms import stack_images

log = logging.getLogger(__name__)

__all__ = [
    "BadImageError",
    "DatasetLayoutError",
    "ImageRecord",
    "ImageRecordDataset",
    "RetrievalSplits",
    "collate_skipping_bad",
    "stratified_split",
]


class DatasetLayoutError(FileNotFoundError):
    """A dataset file is missing or malformed; the message names it and the layout expected."""


class BadImageError(RuntimeError):
    """An image file cannot be decoded (corrupt or truncated)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"cannot read image {str(path)!r}: {reason}. Fix or remove the file, or set "
            "data.skip_bad_images=true to skip (each skip is logged and counted in the report)"
        )
        self.path = path


@dataclass(frozen=True)
class ImageRecord:
    """One image: its path, class index and optional ``(x1, y1, x2, y2)`` crop box."""

    path: Path
    label: int
    bbox: Optional[Tuple[float, float, float, float]] = None


@dataclass
class RetrievalSplits:
    """The splits of a retrieval benchmark.

    ``train`` is the database and the training data, ``test`` the queries (the field's
    protocol); ``val`` is carved out of ``train`` for model selection (queries against
    ``train_minus_val``) and never touches ``test``.
    """

    name: str
    classes: List[str]
    train: List[ImageRecord]
    test: List[ImageRecord]
    val: List[ImageRecord] = field(default_factory=list)
    train_minus_val: List[ImageRecord] = field(default_factory=list)
    notes: Dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def first_classes(self, n: int) -> "RetrievalSplits":
        """The splits restricted to classes ``0 .. n-1``."""
        keep = lambda recs: [r for r in recs if r.label < n]  # noqa: E731
        return RetrievalSplits(self.name, self.classes[:n], keep(self.train), keep(self.test), keep(self.val),
                               keep(self.train_minus_val), {**self.notes, "max_classes": n})

    def carve_validation(self, fraction: float, seed: int) -> None:
        """Moves a stratified ``fraction`` of ``train`` (at least one image of each class that
        has two or more) into ``val``; ``train`` itself keeps every image as the database."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
        if fraction == 0.0:
            self.val, self.train_minus_val = [], list(self.train)
            return
        keep, val = stratified_split(self.train, fraction, seed, min_per_class=1)
        self.val, self.train_minus_val = val, keep


def stratified_split(
    records: Sequence[ImageRecord], fraction: float, seed: int, min_per_class: int = 1
) -> Tuple[List[ImageRecord], List[ImageRecord]]:
    """Seeded split of each class: ``round(fraction * n)`` (at least ``min_per_class``, and
    never the whole class) images go to the second list. Order within lists follows input."""
    by_class: Dict[int, List[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_class[rec.label].append(i)
    rng = random.Random(seed)
    chosen = set()
    for label in sorted(by_class):
        idx = by_class[label]
        if len(idx) < 2:
            continue
        n = min(max(min_per_class, round(fraction * len(idx))), len(idx) - 1)
        chosen.update(rng.sample(idx, n))
    first = [r for i, r in enumerate(records) if i not in chosen]
    second = [r for i, r in enumerate(records) if i in chosen]
    return first, second


def load_image(path: Path, bbox: Optional[Tuple[float, float, float, float]] = None,
               min_size: Optional[Tuple[int, int]] = None) -> Image.Image:
    """Reads an RGB image, cropped to ``bbox``, fully decoded (truncation raises here).

    With ``min_size`` (and no ``bbox``, whose coordinates refer to the full image) a JPEG is
    decoded at the smallest reduced scale (1/2, 1/4, 1/8) whose sides stay at least that
    large, which is several times cheaper than decoding it whole and resizing after.
    """
    try:
        with Image.open(path) as img:
            if min_size is not None and bbox is None:
                img.draft("RGB", min_size)
            img.load()
            if img.mode != "RGB":  # convert() copies even when the mode is already right
                img = img.convert("RGB")
    except FileNotFoundError as err:
        raise BadImageError(path, "file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImageError(path, f"{type(err).__name__}: {err}") from err
    if bbox is not None:
        x1, y1, x2, y2 = bbox
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(float(img.width), x2), min(float(img.height), y2)
        if x2 > x1 and y2 > y1:
            img = img.crop((x1, y1, x2, y2))
    return img


class ImageRecordDataset(Dataset):
    """Reads :class:`ImageRecord` images with a transform.

    Items are ``(image, label, index)``. ``decode_size`` lets JPEGs decode at a reduced
    scale that keeps both sides at least that large (see :func:`load_image`). With ``skip_bad=True`` an unreadable image yields
    ``None`` instead of raising; :func:`collate_skipping_bad` drops it from the batch and
    reports it, so the caller can log and count it.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        use_bbox: bool = False,
        skip_bad: bool = False,
        decode_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.use_bbox = use_bbox
        self.skip_bad = skip_bad
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec = self.records[index]
        try:
            img = load_image(rec.path, rec.bbox if self.use_bbox else None, self.decode_size)
        except BadImageError:
            if not self.skip_bad:
                raise
            return ("bad", index)
        return self.transform(img), rec.label, index


def collate_skipping_bad(items):
    """Stacks good items; returns ``(images, labels, indices, bad_indices)``."""
    bad = [it[1] for it in items if isinstance(it, tuple) and len(it) == 2 and it[0] == "bad"]
    good = [it for it in items if not (isinstance(it, tuple) and len(it) == 2 and it[0] == "bad")]
    if not good:
        return None, None, None, bad
    images = stack_images([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good], dtype=torch.long)
    indices = torch.tensor([g[2] for g in good], dtype=torch.long)
    return images, labels, indices, bad
