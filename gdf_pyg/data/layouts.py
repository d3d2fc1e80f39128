"""Readers for the official layouts of the fine-grained benchmarks and for image folders.

Each reader returns :class:`~gdf_pyg.data.records.RetrievalSplits` with ``train`` (the
database) and ``test`` (the queries), and raises
:class:`~gdf_pyg.data.records.DatasetLayoutError` naming the missing or malformed file and
the expected layout.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import DataConfig
from .records import DatasetLayoutError, ImageRecord, RetrievalSplits, stratified_split

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "read_cars", "read_cub", "read_dogs", "read_image_folder", "read_splits", "write_split"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

CUB_LAYOUT = (
    "CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, "
    "images/<class>/<file>.jpg, optional bounding_boxes.txt}"
)
DOGS_LAYOUT = "StanfordDogs/{Images/<wnid>-<breed>/<file>.jpg, train_list.mat, test_list.mat}"
CARS_LAYOUT = (
    "StanfordCars/{cars_train/, cars_test/, devkit/cars_train_annos.mat, devkit/cars_meta.mat, "
    "cars_test_annos_withlabels.mat (or devkit/...)}  or  StanfordCars/{car_ims/, cars_annos.mat}"
)


def _require_file(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"missing file {str(path)!r}; expected the layout {layout}")
    return path


def _require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"missing folder {str(path)!r}; expected the layout {layout}")
    return path


def _read_table(path: Path, columns: int, layout: str) -> Dict[int, List[str]]:
    """``id value...`` lines; the id is an integer, a line may hold spaces in its last field."""
    rows: Dict[int, List[str]] = {}
    for lineno, line in enumerate(_require_file(path, layout).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=columns - 1)
        if len(parts) != columns:
            raise DatasetLayoutError(
                f"{str(path)!r} line {lineno}: expected {columns} fields, got {len(parts)} ({line!r})"
            )
        try:
            key = int(parts[0])
        except ValueError as err:
            raise DatasetLayoutError(f"{str(path)!r} line {lineno}: expected an integer id, got {parts[0]!r}") from err
        rows[key] = parts[1:]
    return rows


def _int_field(value: str, path: Path, key: int, what: str) -> int:
    try:
        return int(value)
    except ValueError as err:
        raise DatasetLayoutError(f"{str(path)!r} id {key}: {what} must be an integer, got {value!r}") from err


def read_cub(root: Path | str) -> RetrievalSplits:
    """CUB-200-2011 in its official layout (5,994 train / 5,794 test images)."""
    root = Path(root)
    _require_dir(root, CUB_LAYOUT)
    images = _read_table(root / "images.txt", 2, CUB_LAYOUT)
    labels = _read_table(root / "image_class_labels.txt", 2, CUB_LAYOUT)
    split = _read_table(root / "train_test_split.txt", 2, CUB_LAYOUT)
    classes = _read_table(root / "classes.txt", 2, CUB_LAYOUT)
    boxes_path = root / "bounding_boxes.txt"
    boxes = _read_table(boxes_path, 5, CUB_LAYOUT) if boxes_path.is_file() else {}
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise DatasetLayoutError(f"{str(root / 'classes.txt')!r}: class ids must be 1..{len(class_ids)}")
    train: List[ImageRecord] = []
    test: List[ImageRecord] = []
    for key in sorted(images):
        for table, name in ((labels, "image_class_labels.txt"), (split, "train_test_split.txt")):
            if key not in table:
                raise DatasetLayoutError(f"{str(root / name)!r} has no line for image id {key}")
        label = _int_field(labels[key][0], root / "image_class_labels.txt", key, "class id")
        if not 1 <= label <= len(class_ids):
            raise DatasetLayoutError(f"{str(root / 'image_class_labels.txt')!r} id {key}: class {label} not in classes.txt")
        is_train = _int_field(split[key][0], root / "train_test_split.txt", key, "is_training_image")
        if is_train not in (0, 1):
            raise DatasetLayoutError(f"{str(root / 'train_test_split.txt')!r} id {key}: expected 0 or 1, got {is_train}")
        bbox = None
        if key in boxes:
            try:
                x, y, w, h = (float(v) for v in boxes[key])
            except ValueError as err:
                raise DatasetLayoutError(f"{str(boxes_path)!r} id {key}: expected 4 numbers") from err
            bbox = (x, y, x + w, y + h)
        rec = ImageRecord(root / "images" / images[key][0], label - 1, bbox)
        (train if is_train else test).append(rec)
    return RetrievalSplits("cub", [classes[i][0] for i in class_ids], train, test)


def _loadmat(path: Path, layout: str) -> dict:
    from scipy.io import loadmat

    _require_file(path, layout)
    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises several types for malformed files
        raise DatasetLayoutError(f"cannot read MATLAB file {str(path)!r} ({err}); expected the layout {layout}") from err


def _mat_field(mat: dict, key: str, path: Path, layout: str) -> np.ndarray:
    if key not in mat:
        raise DatasetLayoutError(f"{str(path)!r} has no variable {key!r}; expected the layout {layout}")
    return np.atleast_1d(mat[key])


def read_dogs(root: Path | str) -> RetrievalSplits:
    """Stanford Dogs: ``Images/``, ``train_list.mat``, ``test_list.mat`` (12,000 / 8,580)."""
    root = Path(root)
    _require_dir(root / "Images", DOGS_LAYOUT)
    splits = {}
    names: Dict[int, str] = {}
    for split in ("train", "test"):
        path = root / f"{split}_list.mat"
        mat = _loadmat(path, DOGS_LAYOUT)
        files = _mat_field(mat, "file_list", path, DOGS_LAYOUT)
        labels = _mat_field(mat, "labels", path, DOGS_LAYOUT)
        if len(files) != len(labels):
            raise DatasetLayoutError(f"{str(path)!r}: {len(files)} files but {len(labels)} labels")
        records = []
        for f, y in zip(files, labels):
            rel = str(np.atleast_1d(f)[0])
            label = int(y) - 1
            names.setdefault(label, rel.split("/")[0].split("-", 1)[-1])
            records.append(ImageRecord(root / "Images" / rel, label))
        splits[split] = records
    classes = [names.get(i, str(i)) for i in range(max(names) + 1)]
    return RetrievalSplits("dogs", classes, splits["train"], splits["test"])


def _cars_records(annotations: np.ndarray, image_dir: Path, path_field: str) -> List[Tuple[ImageRecord, int]]:
    out = []
    for ann in annotations:
        bbox = tuple(float(ann[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
        test_flag = int(ann["test"]) if "test" in ann.dtype.names else -1
        out.append((ImageRecord(image_dir / str(ann[path_field]), int(ann["class"]) - 1, bbox), test_flag))
    return out


def _cars_annotations(path: Path, fields: Sequence[str]) -> np.ndarray:
    mat = _loadmat(path, CARS_LAYOUT)
    ann = _mat_field(mat, "annotations", path, CARS_LAYOUT)
    names = ann.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise DatasetLayoutError(f"{str(path)!r}: annotations lack fields {missing}; expected the layout {CARS_LAYOUT}")
    return ann


def _cars_classes(mat_path: Path, num: int) -> List[str]:
    if mat_path.is_file():
        mat = _loadmat(mat_path, CARS_LAYOUT)
        if "class_names" in mat:
            return [str(c) for c in np.atleast_1d(mat["class_names"])]
    return [str(i + 1) for i in range(num)]


def read_cars(root: Path | str) -> RetrievalSplits:
    """Stanford Cars, devkit layout or single ``cars_annos.mat`` layout (8,144 / 8,041)."""
    root = Path(root)
    _require_dir(root, CARS_LAYOUT)
    bbox_fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class"]
    single = root / "cars_annos.mat"
    if single.is_file():
        ann = _cars_annotations(single, bbox_fields + ["relative_im_path", "test"])
        pairs = _cars_records(ann, root, "relative_im_path")
        train = [r for r, t in pairs if t == 0]
        test = [r for r, t in pairs if t == 1]
        classes = _cars_classes(single, max(r.label for r, _ in pairs) + 1)
        return RetrievalSplits("cars", classes, train, test)
    train_mat = root / "devkit" / "cars_train_annos.mat"
    test_mat = next((p for p in (root / "cars_test_annos_withlabels.mat",
                                 root / "devkit" / "cars_test_annos_withlabels.mat") if p.is_file()),
                    root / "cars_test_annos_withlabels.mat")
    _require_dir(root / "cars_train", CARS_LAYOUT)
    _require_dir(root / "cars_test", CARS_LAYOUT)
    train = [r for r, _ in _cars_records(_cars_annotations(train_mat, bbox_fields + ["fname"]), root / "cars_train", "fname")]
    test = [r for r, _ in _cars_records(_cars_annotations(test_mat, bbox_fields + ["fname"]), root / "cars_test", "fname")]
    classes = _cars_classes(root / "devkit" / "cars_meta.mat", max(r.label for r in train + test) + 1)
    return RetrievalSplits("cars", classes, train, test)


def read_image_folder(
    root: Path | str,
    *,
    query_fraction: float = 0.2,
    seed: int = 0,
    split_file: Optional[Path] = None,
) -> RetrievalSplits:
    """Any folder with one sub-folder per class (names may contain spaces).

    Each class is split into database (``train``) and query (``test``) images by a seeded,
    stratified rule: ``round(query_fraction * n)`` images, at least one, never all. When
    ``split_file`` exists it is read instead (reproducing an earlier run exactly); the rule
    and the resulting file lists can be written with :func:`write_split`.
    """
    root = Path(root)
    layout = "<root>/<class name>/<image files>"
    _require_dir(root, layout)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetLayoutError(f"{str(root)!r} has no class sub-folders; expected the layout {layout}")
    classes = [p.name for p in class_dirs]
    records: List[ImageRecord] = []
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetLayoutError(f"class folder {str(d)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        records += [ImageRecord(f, label) for f in files]
    notes: Dict[str, object] = {"rule": "stratified", "query_fraction": query_fraction, "seed": seed}
    if split_file is not None and Path(split_file).is_file():
        saved = json.loads(Path(split_file).read_text())
        by_path = {str(r.path.relative_to(root)): r for r in records}
        try:
            train = [by_path[p] for p in saved["database"]]
            test = [by_path[p] for p in saved["query"]]
        except KeyError as err:
            raise DatasetLayoutError(f"split file {str(split_file)!r} names {err}, which is not under {str(root)!r}") from err
        notes = dict(saved.get("rule", notes))
    else:
        if not 0.0 < query_fraction < 1.0:
            raise ValueError(f"query_fraction must be in (0, 1), got {query_fraction}")
        train, test = stratified_split(records, query_fraction, seed, min_per_class=1)
    return RetrievalSplits("folder", classes, train, test, notes=notes)


def write_split(splits: RetrievalSplits, root: Path | str, path: Path | str) -> None:
    """Writes the database/query/validation file lists and the rule that made them."""
    root = Path(root)
    data = {
        "rule": splits.notes,
        "database": [str(r.path.relative_to(root)) for r in splits.train],
        "query": [str(r.path.relative_to(root)) for r in splits.test],
        "validation": [str(r.path.relative_to(root)) for r in splits.val],
    }
    Path(path).write_text(json.dumps(data, indent=1))


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
