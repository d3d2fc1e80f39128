"""Encoding image collections with a trained model, indexing them and querying the index."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data import ImageRecord, ImageRecordDataset, decode_size, eval_transform
from ..data.loading import auto_eval_batch_size
from ..data.layouts import IMAGE_SUFFIXES
from ..data.records import DatasetLayoutError
from ..models.gdfnet import GDFNet
from ..engine.encoding import encode_dataset
from ..engine.inference import load_model
from ..utils.progress import Progress, no_progress
from .index import SavedIndex, pack_codes

log = logging.getLogger(__name__)

__all__ = ["build_index", "collect_images", "encode_records", "eval_batch_size", "open_index", "query_index"]


def eval_batch_size(state: Dict[str, Any], device: str | torch.device = "cpu") -> int:
    """The encoding batch size a checkpoint's run evaluated with (``eval.batch_size``; a run
    records the number it chose, older ones may hold ``auto``: chosen for ``device`` then)."""
    config = state.get("config", {})
    size = config.get("eval", {}).get("batch_size", "auto")
    if size == "auto":
        return auto_eval_batch_size(device, int(config.get("model", {}).get("img_size", 224)))
    return int(size)


def collect_images(root: Path | str, classes: Optional[Sequence[str]] = None) -> Tuple[List[ImageRecord], List[str]]:
    """Images under ``root``: with one sub-folder per class they get the class's index in
    ``classes`` (extended with new names), otherwise the label ``-1`` (unknown). A single
    image file is a collection of one."""
    root = Path(root)
    classes = list(classes or [])
    if root.is_file():
        return [ImageRecord(root, classes.index(root.parent.name) if root.parent.name in classes else -1)], classes
    if not root.is_dir():
        raise DatasetLayoutError(f"{str(root)!r} is neither an image file nor a folder of images")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    records: List[ImageRecord] = []
    if subdirs:
        for d in subdirs:
            if d.name not in classes:
                classes.append(d.name)
            label = classes.index(d.name)
            records += [ImageRecord(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        records = [ImageRecord(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not records:
        raise DatasetLayoutError(f"{str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return records, classes


def encode_records(model: GDFNet, records: Sequence[ImageRecord], *, batch_size: int = 32,
                   device: str | torch.device = "cpu", skip_bad: bool = False, num_workers: int = 0,
                   progress: Progress = no_progress) -> Tuple[torch.Tensor, List[int], List[str]]:
    """Binary codes of the readable images; returns ``(codes, kept positions, skipped paths)``."""
    device = torch.device(device)
    image_config = model.image_config
    dataset = ImageRecordDataset(records, eval_transform(image_config), skip_bad=skip_bad,
                                 decode_size=decode_size(image_config, training=False))
    skipped: List[str] = []
    out = encode_dataset(model.encode, dataset, batch_size, device, num_workers=num_workers, progress=progress,
                         desc="encode", skipped=skipped, paths=[str(r.path) for r in records])
    return out.values, out.positions.tolist(), skipped


def build_index(checkpoint: Path | str, images: Path | str, out: Path | str, *, batch_size: Optional[int] = None,
                device: str = "auto", skip_bad: bool = False, progress: Progress = no_progress) -> SavedIndex:
    """Encodes every image under ``images`` with the model of ``checkpoint`` into ``out``
    (in batches of ``batch_size``, by default the checkpoint's ``eval.batch_size``)."""
    model, state = load_model(checkpoint, device)
    device = next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(state, device)
    records, classes = collect_images(images)
    codes, kept, skipped = encode_records(model, records, batch_size=batch_size, device=device,
                                          skip_bad=skip_bad, progress=progress)
    saved = SavedIndex(
        bits=model.bits,
        packed=pack_codes(codes),
        labels=np.array([records[i].label for i in kept], dtype=np.int64),
        paths=[str(records[i].path.resolve()) for i in kept],
        classes=classes,
        meta={"checkpoint": str(Path(checkpoint).resolve()), "model_config": state["model_config"],
              "images": str(Path(images).resolve()), "skipped": skipped, "created": time.strftime("%Y-%m-%d %H:%M:%S")},
    )
    saved.save(out)
    log.info("indexed %d images (%d bits) into %s", len(kept), model.bits, out)
    return saved


def open_index(index_dir: Path | str, checkpoint: Optional[Path | str] = None, device: str | torch.device = "auto"
               ) -> Tuple[SavedIndex, GDFNet, Dict[str, Any]]:
    """An index, the model that encodes its queries (``checkpoint``, or the one the index names:
    a checkpoint or an exported model folder) and the model's checkpoint data."""
    saved = SavedIndex.load(index_dir)
    ckpt = checkpoint or saved.meta.get("checkpoint")
    if ckpt is None:
        raise ValueError(f"index {str(index_dir)!r} names no model; pass a checkpoint or an exported model folder")
    model, state = load_model(ckpt, device)
    if model.bits != saved.bits:
        raise ValueError(f"{ckpt} makes {model.bits}-bit codes, the index holds {saved.bits}-bit codes")
    return saved, model, state


def query_index(index_dir: Path | str, images: Sequence[Path | str], *, topk: int = 10, engine: str = "auto",
                checkpoint: Optional[Path | str] = None, device: str = "auto") -> List[Dict[str, Any]]:
    """Top-``topk`` database items of each query image, nearest first (ties by index order).

    Each result is ``{"query", "query_label", "hits": [{"rank", "distance", "path", "label", "match"}]}``;
    ``label`` is a class name or ``None`` when unknown, ``match`` whether it equals the
    query's class (``None`` when either label is unknown). A query's class is the name of
    its parent folder when that is one of the index's classes.
    """
    saved, model, state = open_index(index_dir, checkpoint, device)
    records = []
    for img in images:
        path = Path(img)
        label = saved.classes.index(path.parent.name) if path.parent.name in saved.classes else -1
        records.append(ImageRecord(path, label))
    device = next(model.parameters()).device
    codes, kept, _ = encode_records(model, records, batch_size=eval_batch_size(state, device), device=device)
    dist, ids = saved.index(engine).search(pack_codes(codes), topk)
    results = []
    for row, pos in enumerate(kept):
        q = records[pos]
        q_label = saved.classes[q.label] if q.label >= 0 else None
        hits = []
        for rank, (d, i) in enumerate(zip(dist[row], ids[row]), start=1):
            lab = int(saved.labels[i])
            name = saved.classes[lab] if lab >= 0 else None
            hits.append({"rank": rank, "distance": int(d), "path": saved.paths[i], "label": name,
                         "match": None if name is None or q_label is None else name == q_label})
        results.append({"query": str(q.path), "query_label": q_label, "hits": hits})
    return results
