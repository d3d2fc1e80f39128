"""Evaluation: the codes of a data set's splits under a model, the validation mAP that selects a
model, and the retrieval report of the field's protocol (queries: the test split; database: the
training split).

One home for what training's model selection, a run's final report, ``gdf-pyg eval`` and the
benchmarks compute, so that they compute it the same way: codes in float32, in batches of the
run's ``eval.batch_size``, from images or (frozen backbone) from the backbone maps cached in the
same batches, shared among the processes of a multi-process job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..engine.distributed import DistContext
from ..engine.encoding import EncodedSet, ImageEncoder, encode_cached
from ..models.gdfnet import GDFNet
from ..utils.codes import binarize
from ..utils.progress import Progress, no_progress
from .metrics import PRCurve, mean_average_precision, retrieval_report

__all__ = ["Evaluator", "SELECTION_CHUNK", "Split", "evaluate_codes", "validation_map", "validation_sets"]

# Cached maps per forward pass when codes only select a model (validation during training).
SELECTION_CHUNK = 512


@dataclass
class Split:
    """One split of a data set: its images (the evaluation transform), their paths and labels (in
    the dataset's order) and, with a frozen backbone, the backbone maps cached for them."""

    dataset: Dataset
    paths: Sequence[str]
    labels: Tensor
    cached: Optional[EncodedSet] = None


def validation_sets(codes: EncodedSet, labels: Tensor, val_pos: Tensor, fit_pos: Tensor
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The validation queries (positions ``val_pos`` of the training split) and their database (the
    rest, ``fit_pos``) among a training split's codes: ``(query_codes, db_codes, query_labels,
    db_labels)``. Images left out of ``codes`` (unreadable) are left out of both."""
    where = {p: i for i, p in enumerate(codes.positions.tolist())}
    q = [where[p] for p in val_pos.tolist() if p in where]
    db = [where[p] for p in fit_pos.tolist() if p in where]
    rows = labels[codes.positions]
    return codes.values[q], codes.values[db], rows[q], rows[db]


def validation_map(codes: EncodedSet, labels: Tensor, val_pos: Tensor, fit_pos: Tensor) -> float:
    """mAP@all of the validation images against the rest of the training split."""
    return mean_average_precision(*validation_sets(codes, labels, val_pos, fit_pos))


def evaluate_codes(query_codes: Tensor, query_labels: Tensor, db_codes: Tensor, db_labels: Tensor,
                   topks: Sequence[int], radius: int) -> Tuple[Dict[str, float], PRCurve]:
    """The scalar metrics and the precision-recall curve of one code length."""
    return retrieval_report(query_codes, db_codes, query_labels, db_labels, topks=topks, radius=radius)


@dataclass
class Evaluator:
    """Codes of named splits (``"train"``, ``"test"``) under any model, as often as asked.

    Images go through one loader per split whose workers persist between calls (validation
    every few epochs does not start them again); cached maps go through the model's head alone,
    replaying the batches they were encoded in (so codes equal those from images), or in larger
    chunks where only a model selection depends on them.
    """

    splits: Dict[str, Split]
    device: torch.device
    batch_size: int
    ctx: DistContext = field(default_factory=DistContext)
    num_workers: int = 0
    progress: Progress = no_progress
    skipped: List[str] = field(default_factory=list)
    _encoders: Dict[str, ImageEncoder] = field(default_factory=dict, repr=False)

    def codes(self, model: GDFNet, split: str, selection: bool = False, with_classes: bool = False) -> EncodedSet:
        """Binary codes of every readable image of ``split``; with ``selection`` cached maps are
        taken in chunks of :data:`SELECTION_CHUNK` (codes equal up to float rounding); with
        ``with_classes`` each row ends in one more column, the class the model predicts (the class
        classifier's with ``hash_input=posterior``, else the codes' classifier's), from the same pass."""
        model.eval()
        source = self.splits[split]

        def encode(forward):
            def fn(inputs: Tensor) -> Tensor:
                out = forward(inputs)
                codes = binarize(out.codes)
                if not with_classes:
                    return codes
                scores = out.class_logits if out.class_logits is not None else out.logits
                return torch.cat([codes, scores.argmax(1, keepdim=True).to(codes.dtype)], 1)
            return fn

        if source.cached is not None:
            return encode_cached(encode(model.forward_head), source.cached, self.device, self.ctx,
                                 chunk=SELECTION_CHUNK if selection else None)
        if split not in self._encoders:
            self._encoders[split] = ImageEncoder(source.dataset, self.batch_size, self.device, ctx=self.ctx,
                                                 num_workers=self.num_workers, paths=source.paths)
        return self._encoders[split](encode(model.forward), progress=self.progress, desc=f"encode {split}",
                                     skipped=self.skipped)

    def labels(self, split: str, codes: EncodedSet) -> Tensor:
        """The labels of the rows of ``codes`` (codes of ``split``)."""
        return self.splits[split].labels[codes.positions]

    def validation_map(self, model: GDFNet, val_pos: Tensor, fit_pos: Tensor,
                       codes: Optional[EncodedSet] = None) -> float:
        """mAP@all of the validation images against the rest of the training split (``codes``:
        the training split's codes, when already computed)."""
        codes = codes if codes is not None else self.codes(model, "train", selection=True)
        return validation_map(codes, self.splits["train"].labels, val_pos, fit_pos)

    def report(self, model: GDFNet, topks: Sequence[int], radius: int
               ) -> Tuple[Dict[str, float], PRCurve, EncodedSet, EncodedSet]:
        """The field's protocol: the test split's codes searched among the training split's, and
        the top-1 accuracy of the model's class prediction on the test split (``top1_accuracy``;
        with posterior codes, mAP and accuracy should nearly agree). Returns the metrics, the
        precision-recall curve, and both splits' codes."""
        coded, train = self.codes(model, "test", with_classes=True), self.codes(model, "train")
        test = EncodedSet(coded.values[:, :-1], coded.positions, coded.batches)
        test_labels = self.labels("test", test)
        report, curve = evaluate_codes(test.values, test_labels, train.values, self.labels("train", train), topks,
                                       radius)
        report["top1_accuracy"] = (coded.values[:, -1].long() == test_labels).double().mean().item()
        return report, curve, test, train
