"""Datasets: the official fine-grained layouts, image folders and the synthetic default."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from .layouts import read_cars, read_cub, read_dogs, read_image_folder, write_split
from .records import (
    BadImageError,
    DatasetLayoutError,
    ImageRecord,
    ImageRecordDataset,
    RetrievalSplits,
    collate_skipping_bad,
    stratified_split,
)
from .synthetic import SyntheticConfig, SyntheticFineGrained

__all__ = [
    "BadImageError",
    "DATASETS",
    "DataConfig",
    "DatasetLayoutError",
    "ImageRecord",
    "ImageRecordDataset",
    "RetrievalSplits",
    "SyntheticConfig",
    "SyntheticFineGrained",
    "collate_skipping_bad",
    "eval_transform",
    "read_cars",
    "read_cub",
    "read_dogs",
    "read_image_folder",
    "read_splits",
    "stratified_split",
    "train_transform",
    "write_split",
]

DATASETS = ("synthetic", "cub", "dogs", "cars", "folder")


@dataclass
class DataConfig:
    """Where the images come from and how they are split.

    ``dataset`` is ``synthetic`` (generated, no files), ``cub``, ``dogs``, ``cars`` (their
    official layouts under ``root``) or ``folder`` (one sub-folder per class under ``root``,
    split into database/query by ``query_fraction`` and ``split_seed``). ``val_fraction`` of
    the training split (stratified, seeded) is held out for model selection. ``max_classes``
    keeps only the first classes (in the dataset's class order), for quick experiments.
    """

    dataset: str = "synthetic"
    root: Optional[str] = None
    val_fraction: float = 0.1
    query_fraction: float = 0.2
    split_seed: int = 0
    bbox_crop: bool = False
    skip_bad_images: bool = False
    num_workers: int = 0
    max_classes: Optional[int] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self, prefix: str = "data") -> None:
        from ..config import _choice, _require

        _choice(self.dataset, DATASETS, f"{prefix}.dataset")
        if self.dataset != "synthetic":
            _require(self.root is not None, f"{prefix}.root", f"dataset {self.dataset!r} needs a root folder")
            _require(Path(self.root).expanduser().is_dir(), f"{prefix}.root", f"{self.root!r} is not a folder")
        _require(0.0 <= self.val_fraction < 1.0, f"{prefix}.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _require(0.0 < self.query_fraction < 1.0, f"{prefix}.query_fraction",
                 f"must be in (0, 1), got {self.query_fraction}")
        _require(self.num_workers >= 0, f"{prefix}.num_workers", f"must be >= 0, got {self.num_workers}")
        _require(self.max_classes is None or self.max_classes >= 2, f"{prefix}.max_classes",
                 f"must be >= 2 or null, got {self.max_classes}")
        s = self.synthetic
        _require(s.num_classes >= 2, f"{prefix}.synthetic.num_classes", f"must be >= 2, got {s.num_classes}")
        _require(s.train_per_class >= 2, f"{prefix}.synthetic.train_per_class", f"must be >= 2, got {s.train_per_class}")
        _require(s.test_per_class >= 1, f"{prefix}.synthetic.test_per_class", f"must be >= 1, got {s.test_per_class}")


def read_splits(cfg: DataConfig, split_file: Optional[Path] = None) -> RetrievalSplits:
    """The train (database) / test (query) records of a file-based dataset, with the
    validation split carved out of train."""
    if cfg.dataset == "synthetic":
        raise ValueError("the synthetic dataset has no files; use SyntheticFineGrained")
    root = Path(cfg.root).expanduser()
    if cfg.dataset == "cub":
        splits = read_cub(root)
    elif cfg.dataset == "dogs":
        splits = read_dogs(root)
    elif cfg.dataset == "cars":
        splits = read_cars(root)
    else:
        splits = read_image_folder(root, query_fraction=cfg.query_fraction, seed=cfg.split_seed, split_file=split_file)
    if cfg.max_classes is not None and cfg.max_classes < splits.num_classes:
        splits = splits.first_classes(cfg.max_classes)
    for name in ("train", "test"):
        if not getattr(splits, name):
            raise DatasetLayoutError(f"dataset {cfg.dataset!r} at {str(root)!r} has no {name} images")
    splits.carve_validation(cfg.val_fraction, cfg.split_seed)
    return splits


def _resize_size(img_size: int, crop_pct: float = 0.875) -> int:
    return int(round(img_size / crop_pct))


def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crop and flip, the fine-grained training standard."""
    return T.Compose([
        T.RandomResizedCrop(img_size, scale=(0.35, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to ``img_size / 0.875`` and centre-crop ``img_size``."""
    return T.Compose([
        T.Resize(_resize_size(img_size), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
