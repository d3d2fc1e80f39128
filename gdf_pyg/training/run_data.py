"""The data of a run: datasets with their transforms, the validation split, and the data's identity.

A run records what it trained and evaluated on (``RUN_DIR/dataset.json``: every file with its
size; image folders also keep their split in ``RUN_DIR/split.json``). Evaluating the run later
reads the same split and stops with :class:`DatasetChangedError` when the files differ.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data import (
    ImageRecordDataset,
    RetrievalSplits,
    SyntheticFineGrained,
    decode_size,
    eval_transform,
    read_splits,
    stratified_split,
    train_transform,
    write_split,
)
from ..data.records import DatasetLayoutError, ImageRecord
from ..engine.distributed import DistContext
from ..engine.encoding import EncodedSet
from ..retrieval.evaluation import Evaluator, Split
from ..utils.progress import Progress, no_progress
from ..utils.config_io import to_dict
from .config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["DatasetChangedError", "RunData", "build_run_data", "check_identity", "queries_seen_in_training",
           "require_recorded_split", "run_evaluator"]

SPLIT_FILE = "split.json"
IDENTITY_FILE = "dataset.json"


class DatasetChangedError(DatasetLayoutError):
    """The files of a dataset differ from those a run was trained and evaluated on."""


@dataclass
class RunData:
    """The datasets of one run.

    ``train_eval`` is the whole training split with the evaluation transform (the
    database), ``test_eval`` the test split (the queries). Model selection uses positions
    ``val_pos`` of the training split as queries against ``fit_pos`` (the rest of the
    training split, which is also what the model trains on, through ``train_aug``).
    ``identity`` describes the data exactly (every file and its size).
    """

    name: str
    classes: List[str]
    train_aug: Dataset
    train_eval: Dataset
    test_eval: Dataset
    train_labels: Tensor
    test_labels: Tensor
    fit_pos: Tensor
    val_pos: Tensor
    train_paths: List[str]
    test_paths: List[str]
    identity: Dict[str, Any]
    skipped: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fit_paths(self) -> List[str]:
        """Paths of the images the model trains on, in the order of ``fit_pos`` (``train_aug``'s)."""
        return [self.train_paths[p] for p in self.fit_pos.tolist()]


def _positions(records: Sequence[ImageRecord], subset: Sequence[ImageRecord]) -> Tensor:
    where = {rec: i for i, rec in enumerate(records)}
    return torch.tensor(sorted(where[r] for r in subset), dtype=torch.long)


class _SubsetItems(Dataset):
    """The items ``indices`` of ``dataset``, each carrying its position in the subset (as
    ``ImageRecordDataset``'s items carry theirs), not in the dataset it was cut from."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label, _ = self.dataset[self.indices[index]]
        return image, label, index


def _synthetic_data(cfg: TrainConfig, mean: Sequence[float], std: Sequence[float]) -> RunData:
    d, size, s = cfg.data, cfg.model.img_size, cfg.data.synthetic
    train_eval = SyntheticFineGrained(s, size, "train", mean, std)
    test_eval = SyntheticFineGrained(s, size, "test", mean, std)
    labels = train_eval.labels
    idx = list(range(len(train_eval)))
    recs = [ImageRecord(Path(f"synthetic/train/{i}"), label) for i, label in zip(idx, labels.tolist())]
    fit, val = stratified_split(recs, d.val_fraction, d.split_seed) if d.val_fraction > 0 else (recs, [])
    fit_pos, val_pos = _positions(recs, fit), _positions(recs, val)
    aug = SyntheticFineGrained(s, size, "train", mean, std, augment=True)
    return RunData(
        "synthetic", train_eval.classes, _SubsetItems(aug, fit_pos.tolist()), train_eval, test_eval, labels,
        test_eval.labels, fit_pos, val_pos, [f"synthetic:train:{i}" for i in idx],
        [f"synthetic:test:{i}" for i in range(len(test_eval))], {"dataset": "synthetic", **to_dict(s)},
    )


def _file_identity(cfg: TrainConfig, splits: RetrievalSplits) -> Dict[str, Any]:
    """Every file of both splits with its size in bytes (a missing file has size -1)."""
    root = Path(cfg.data.root).expanduser().resolve()
    # Relative to the root as given, links unresolved: a root of linked class folders lists its files too.
    given = os.path.abspath(Path(cfg.data.root).expanduser())

    def listing(records: Sequence[ImageRecord]) -> List[List[Any]]:
        out = []
        for r in records:
            try:
                size = r.path.stat().st_size
            except OSError:
                size = -1
            out.append([os.path.relpath(os.path.abspath(r.path), given), size])
        return out

    return {"dataset": cfg.data.dataset, "root": str(root), "bbox": cfg.data.bbox_crop,
            "max_classes": cfg.data.max_classes, "database": listing(splits.train), "query": listing(splits.test)}


def build_run_data(cfg: TrainConfig, image_config: Mapping[str, Any], run_dir: Optional[Path] = None, *,
                   write: bool = False) -> RunData:
    """Reads (or generates) the dataset of ``cfg.data`` and carves the validation split.

    ``image_config`` is the backbone's data config (:meth:`FeatureBackbone.image_config`),
    which decides the transforms. An image folder's database/query split is read from
    ``run_dir/split.json`` when it exists; with ``write=True`` (training) the split and the
    data's identity are written there.
    """
    mean, std = image_config["mean"], image_config["std"]
    if cfg.data.dataset == "synthetic":
        return _synthetic_data(cfg, mean, std)
    d = cfg.data
    split_file = run_dir / SPLIT_FILE if run_dir is not None else None
    splits: RetrievalSplits = read_splits(d, split_file)
    identity = _file_identity(cfg, splits)
    if write and run_dir is not None:
        if d.dataset == "folder":
            write_split(splits, Path(d.root).expanduser(), split_file)
        (run_dir / IDENTITY_FILE).write_text(json.dumps(identity))
    fit_pos, val_pos = _positions(splits.train, splits.train_minus_val), _positions(splits.train, splits.val)
    ev, tr = eval_transform(image_config), train_transform(image_config)
    opts = dict(use_bbox=d.bbox_crop, skip_bad=d.skip_bad_images)
    eval_size, train_size = decode_size(image_config, training=False), decode_size(image_config, training=True)
    return RunData(
        splits.name, splits.classes,
        ImageRecordDataset(splits.train_minus_val, tr, decode_size=train_size, **opts),
        ImageRecordDataset(splits.train, ev, decode_size=eval_size, **opts),
        ImageRecordDataset(splits.test, ev, decode_size=eval_size, **opts),
        torch.tensor([r.label for r in splits.train]), torch.tensor([r.label for r in splits.test]),
        fit_pos, val_pos, [str(r.path) for r in splits.train], [str(r.path) for r in splits.test], identity,
    )


def _describe(paths: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_identity(run_dir: Path, data: RunData) -> None:
    """Stops with :class:`DatasetChangedError` when ``data`` is not the data the run in
    ``run_dir`` recorded; does nothing for runs that recorded none (synthetic data)."""
    path = run_dir / IDENTITY_FILE
    if data.name == "synthetic" or not path.is_file():
        return
    recorded = json.loads(path.read_text())
    problems = []
    # The root itself may move (data.root overridden to a copy): the files under it must not.
    for key in ("dataset", "bbox", "max_classes"):
        if recorded.get(key) != data.identity.get(key):
            problems.append(f"{key} was {recorded.get(key)!r}, now {data.identity.get(key)!r}")
    for split in ("database", "query"):
        before, now = dict(map(tuple, recorded[split])), dict(map(tuple, data.identity[split]))
        removed = sorted(set(before) - set(now))
        added = sorted(set(now) - set(before))
        resized = sorted(p for p in set(before) & set(now) if before[p] != now[p])
        if removed:
            problems.append(f"{len(removed)} {split} file(s) missing: {_describe(removed)}")
        if added:
            problems.append(f"{len(added)} {split} file(s) added: {_describe(added)}")
        if resized:
            problems.append(f"{len(resized)} {split} file(s) changed size: {_describe(resized)}")
    if problems:
        raise DatasetChangedError(
            f"the data differs from what the run in {str(run_dir)!r} was trained and evaluated on ({path.name}): "
            + "; ".join(problems) + ". Restore the data, or pass --resplit to evaluate on the data as it is now"
        )


def run_evaluator(data: RunData, device: torch.device, batch_size: int, ctx: Optional[DistContext] = None,
                  num_workers: int = 0, progress: Progress = no_progress,
                  features: Optional[Dict[str, EncodedSet]] = None) -> Evaluator:
    """The evaluator of a run's ``train`` and ``test`` splits (from ``features``, the cached
    backbone maps of a frozen backbone, when given); images skipped as unreadable are added to
    ``data.skipped``."""
    features = features or {}
    splits = {"train": Split(data.train_eval, data.train_paths, data.train_labels, features.get("train")),
              "test": Split(data.test_eval, data.test_paths, data.test_labels, features.get("test"))}
    return Evaluator(splits, device, batch_size, ctx or DistContext(), num_workers, progress, data.skipped)


def require_recorded_split(run_dir: Path, data_cfg: Any) -> None:
    """Stops with :class:`DatasetChangedError` unless ``run_dir`` holds what evaluating a run on
    its own data needs: ``dataset.json`` (the files it trained and was evaluated on) and, for an
    image folder, ``split.json`` (its database/query split). Without them the data would be split
    again from the seed, and photos the model trained on could become queries."""
    if data_cfg.dataset == "synthetic":
        return
    needed = [IDENTITY_FILE] + ([SPLIT_FILE] if data_cfg.dataset == "folder" else [])
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise DatasetChangedError(
            f"{str(run_dir)!r} has no {' and no '.join(missing)}: the run's split and files cannot be checked "
            f"(was the checkpoint copied out of its run folder?). Evaluate it inside its run folder, or pass "
            f"--resplit to evaluate on the data as it is now, split anew")


def queries_seen_in_training(run_dir: Path, data: RunData) -> Optional[int]:
    """How many of ``data``'s queries (a new split) the run in ``run_dir`` had among its training
    images (its database: the images it trained and validated on); ``None`` where the run
    recorded no ``dataset.json``."""
    path = run_dir / IDENTITY_FILE
    if data.name == "synthetic" or not path.is_file():
        return None
    trained = {name for name, _ in json.loads(path.read_text())["database"]}
    return sum(name in trained for name, _ in data.identity["query"])
