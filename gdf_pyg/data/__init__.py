"""Datasets: the official fine-grained layouts, image folders and the synthetic default; transforms
and data loading."""
from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "DATASETS": ".config", "DataConfig": ".config", "read_cars": ".layouts", "read_cub": ".layouts",
    "read_dogs": ".layouts", "read_image_folder": ".layouts", "read_splits": ".layouts", "write_split": ".layouts",
    "BadImageError": ".records", "DatasetLayoutError": ".records", "ImageRecord": ".records",
    "ImageRecordDataset": ".records", "RetrievalSplits": ".records", "collate_skipping_bad": ".records",
    "stratified_split": ".records", "SyntheticConfig": ".synthetic", "SyntheticFineGrained": ".synthetic",
    "decode_size": ".transforms", "eval_transform": ".transforms", "stack_images": ".transforms",
    "train_transform": ".transforms", "resolve_num_workers": ".loading",
})
