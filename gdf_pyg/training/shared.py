"""Every code length as a hash head of one shared encoder (``train.shared_encoder``).

One backbone and region-graph encoder carry a hash head per code length, trained together on
the sum of the heads' losses: one training instead of one per code length. Each code length
keeps the weights of its own best validation epoch and is saved, evaluated and deployed as a
plain :class:`~gdf_pyg.models.gdfnet.GDFNet` (``bits{K}/best.pt``), exactly like separately
trained models. Separate models stay the default, as in the paper.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional

from torch import Tensor

from ..engine.checkpoint import state_dict_cpu
from ..engine.encoding import EncodedSet
from ..models.gdfnet import GDFNet, GDFNetConfig, GDFOutput, SharedEncoderGDFNet
from ..nn.losses import distillation_loss
from ..nn.sync import all_gather_cat
from ..utils.checks import ConfigError
from .config import TrainConfig
from .run_data import RunData
from .trainer import Trainer, model_config_for, similarity_bits_of_head

log = logging.getLogger(__name__)

__all__ = ["SharedEncoderTrainer"]


class SharedEncoderTrainer(Trainer):
    """Trains the code lengths ``bits`` as heads of one encoder; see the module docstring.

    Built like a :class:`~gdf_pyg.training.trainer.Trainer` (:meth:`from_config` with the list of
    code lengths). ``best_metric``, ``best_epoch`` and ``best_state`` are dictionaries keyed by
    code length.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.all_bits = list(self.model.all_bits)
        self.best_metric = {b: -1.0 for b in self.all_bits}
        self.best_epoch = {b: -1 for b in self.all_bits}
        self.best_state: Dict[int, Optional[Dict[str, Tensor]]] = {b: None for b in self.all_bits}

    @staticmethod
    def label_for(bits: Any) -> str:
        return "+".join(map(str, bits)) + " bits (shared encoder)"

    @staticmethod
    def new_model(cfg: TrainConfig, bits: Any, data: RunData) -> GDFNet:
        if cfg.train.init_from is not None:
            raise ConfigError("train.init_from: not available with train.shared_encoder=true")
        bits = [int(b) for b in bits]
        return SharedEncoderGDFNet(model_config_for(cfg, bits[0], data.num_classes), bits)

    @property
    def bits(self) -> List[int]:  # type: ignore[override]
        return list(self.model.all_bits)

    def losses(self, out: GDFOutput, labels: Tensor, sizes: Optional[List[int]] = None) -> Dict[str, Tensor]:
        """The sum over heads of each head's loss terms; ``loss@K`` is head ``K``'s total. With
        ``loss.distill`` each shorter head also learns the longest head's class distribution
        (the teacher passes no gradient through it)."""
        model: SharedEncoderGDFNet = self.model
        codes = model.split(out.codes.float())
        logits = dict(zip(self.all_bits, out.logits.float().split(self.data.num_classes, dim=1)))
        class_logits = (dict(zip(self.all_bits, out.class_logits.float().split(self.data.num_classes, dim=1)))
                        if out.class_logits is not None else {})
        w = self.loss_fn.weights
        teacher = out.pooled.float() if out.pooled is not None and w.similarity else None
        longest = max(self.all_bits)
        teacher_logits = all_gather_cat(logits[longest], sizes) if w.distill else None  # once for every student
        terms: Dict[str, Tensor] = {}
        for b in self.all_bits:
            head = self.loss_fn(codes[b], logits[b], labels, class_logits.get(b), shard_sizes=sizes, teacher=teacher,
                                similarity_bits=similarity_bits_of_head(model, model.heads[str(b)]))
            if teacher_logits is not None and b != longest:
                head["distill"] = w.distill * distillation_loss(all_gather_cat(logits[b], sizes), teacher_logits,
                                                                w.distill_temperature)
                head["loss"] = head["loss"] + head["distill"]
            for k, v in head.items():
                terms[k] = terms[k] + v if k in terms else v
            terms[f"loss@{b}"] = head["loss"]
        return terms

    def single_config(self, bits: int) -> GDFNetConfig:
        """The configuration of the plain GDF-Net of ``bits`` bits."""
        return dataclasses.replace(self.model.config, bits=bits)

    def single_model(self, bits: int, state: Optional[Dict[str, Tensor]] = None) -> GDFNet:
        """The plain GDF-Net of ``bits`` bits with the shared weights (``state`` or the current ones),
        built without pretrained weights (they are overwritten at once: nothing is read or fetched)."""
        config = self.single_config(bits)
        model = GDFNet(dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, pretrained=False,
                                                                                  weights_file=None)))
        model.load_state_dict(self.model.single_state(bits, state))
        return model.to(self.device)

    def _select(self, stats: Dict[str, float], evaluate: bool) -> None:
        if not len(self.data.val_pos):
            state = state_dict_cpu(self.selected_model)
            for b in self.all_bits:
                self.best_epoch[b], self.best_state[b] = self.epoch, state
            return
        if not evaluate:
            return
        codes = self.codes("train", selection=True)
        state = None
        for b, values in self.model.split(codes.values).items():
            stats[f"val_map@{b}"] = value = self.validation_map(EncodedSet(values, codes.positions, codes.batches))
            if value > self.best_metric[b]:
                state = state or state_dict_cpu(self.selected_model)
                self.best_metric[b], self.best_epoch[b], self.best_state[b] = value, self.epoch, state

    def _selection_state(self) -> Dict[str, Any]:
        # Plain data with string keys; an epoch's weights are stored once however many heads chose it.
        epochs = sorted({e for e in self.best_epoch.values() if e >= 0})
        weights = {str(e): next(self.best_state[b] for b in self.all_bits if self.best_epoch[b] == e) for e in epochs}
        return {"best_metric": {str(b): v for b, v in self.best_metric.items()},
                "best_epoch": {str(b): e for b, e in self.best_epoch.items()}, "best_model": weights}

    def _restore_selection(self, state: Dict[str, Any]) -> None:
        self.best_metric = {int(b): float(v) for b, v in state["best_metric"].items()}
        self.best_epoch = {int(b): int(e) for b, e in state["best_epoch"].items()}
        self.best_state = {b: state["best_model"].get(str(e)) for b, e in self.best_epoch.items()}

    def model_checkpoint_of(self, bits: int) -> Dict[str, Any]:
        """``bits{K}/best.pt``: the plain GDF-Net of one code length at its best epoch."""
        state = self.model_checkpoint()
        state.update(model=self.model.single_state(bits, self.best_state[bits]), bits=bits,
                     model_config=self.single_config(bits).to_dict(),
                     best_metric=self.best_metric[bits], best_epoch=self.best_epoch[bits])
        return state
