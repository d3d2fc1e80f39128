"""Datasets: the official fine-grained layouts, image folders and the synthetic default."""
from .config import DATASETS, DataConfig
from .layouts import read_cars, read_cub, read_dogs, read_image_folder, read_splits, write_split
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
from .transforms import decode_size, eval_transform, stack_images, train_transform

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
    "decode_size",
    "eval_transform",
    "read_cars",
    "read_cub",
    "read_dogs",
    "read_image_folder",
    "read_splits",
    "stack_images",
    "stratified_split",
    "train_transform",
    "write_split",
]
