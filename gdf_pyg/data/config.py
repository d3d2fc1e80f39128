"""The data section of a run: which dataset, where, and how it is split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..utils.checks import choice, require
from .synthetic import SyntheticConfig

__all__ = ["DATASETS", "DataConfig"]

DATASETS = ("synthetic", "cub", "dogs", "cars", "folder")


@dataclass
class DataConfig:
    """Where the images come from and how they are split.

    ``dataset`` is ``synthetic`` (generated, no files), ``cub``, ``dogs``, ``cars`` (their
    official layouts under ``root``) or ``folder`` (one sub-folder per class under ``root``,
    split into database/query by ``query_fraction`` and ``split_seed``). ``val_fraction`` of
    the training split (stratified, seeded) is held out for model selection. ``max_classes``
    keeps only the first classes (in the dataset's class order), for quick experiments.
    ``num_workers`` is the number of data-loading processes, or ``auto``: chosen from the cores
    this process may use and the device (:func:`~gdf_pyg.data.loading.resolve_num_workers`).
    """

    dataset: str = "synthetic"
    root: Optional[str] = None
    val_fraction: float = 0.1
    query_fraction: float = 0.2
    split_seed: int = 0
    bbox_crop: bool = False
    skip_bad_images: bool = False
    num_workers: Union[int, str] = "auto"
    max_classes: Optional[int] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self, prefix: str = "data") -> None:
        choice(self.dataset, DATASETS, f"{prefix}.dataset")
        if self.dataset != "synthetic":
            require(self.root is not None, f"{prefix}.root", f"dataset {self.dataset!r} needs a root folder")
            require(Path(self.root).expanduser().is_dir(), f"{prefix}.root", f"{self.root!r} is not a folder")
        require(0.0 <= self.val_fraction < 1.0, f"{prefix}.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        require(0.0 < self.query_fraction < 1.0, f"{prefix}.query_fraction",
                 f"must be in (0, 1), got {self.query_fraction}")
        require(self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0),
                f"{prefix}.num_workers", f"must be a number >= 0 or 'auto', got {self.num_workers!r}")
        require(self.max_classes is None or self.max_classes >= 2, f"{prefix}.max_classes",
                 f"must be >= 2 or null, got {self.max_classes}")
        s = self.synthetic
        require(s.num_classes >= 2, f"{prefix}.synthetic.num_classes", f"must be >= 2, got {s.num_classes}")
        require(s.train_per_class >= 2, f"{prefix}.synthetic.train_per_class", f"must be >= 2, got {s.train_per_class}")
        require(s.test_per_class >= 1, f"{prefix}.synthetic.test_per_class", f"must be >= 1, got {s.test_per_class}")
