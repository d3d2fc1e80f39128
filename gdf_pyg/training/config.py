"""The training run's configuration: model, data, optimiser, losses, training and evaluation.

Each section is a dataclass that lives beside the code it configures (the model's in
:mod:`gdf_pyg.models.gdfnet` and :mod:`gdf_pyg.nn`, the data's in :mod:`gdf_pyg.data`, the
losses' in :mod:`gdf_pyg.nn.losses`); :class:`TrainConfig` puts them together and reads them
from a preset, a YAML file and dotted overrides, checking every value before work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..data.config import DataConfig
from ..models.gdfnet import GDFNetConfig, similarity_bits_of
from ..nn.losses import LossWeights
from ..presets import load_preset_dict
from ..utils.checks import ConfigError, choice, require
from ..utils.config_io import apply_overrides, from_dict, load_yaml, merge, to_dict

__all__ = ["ConfigError", "EvalConfig", "OptimConfig", "TrainConfig", "TrainSection"]


@dataclass
class OptimConfig:
    """AdamW with per-step warm-up and cosine (or step, or constant) decay.

    ``ema_decay`` (0 = off) keeps an exponential moving average of the weights with that decay
    (:mod:`gdf_pyg.training.ema`); validation, model selection and the saved models use it.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0
    ema_decay: float = 0.0

    def validate(self, prefix: str = "optim") -> None:
        require(self.epochs >= 1, f"{prefix}.epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 2, f"{prefix}.batch_size", f"must be >= 2 (the losses compare codes in a batch), got {self.batch_size}")
        require(self.lr > 0, f"{prefix}.lr", f"must be > 0, got {self.lr}")
        require(self.backbone_lr >= 0, f"{prefix}.backbone_lr", f"must be >= 0, got {self.backbone_lr}")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        choice(self.scheduler, ("cosine", "step", "none"), f"{prefix}.scheduler")
        require(0 <= self.warmup_epochs < self.epochs, f"{prefix}.warmup_epochs",
                 f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        require(self.grad_clip >= 0, f"{prefix}.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        require(0 <= self.ema_decay < 1, f"{prefix}.ema_decay", f"must be in [0, 1) (0 = off), got {self.ema_decay}")


@dataclass
class TrainSection:
    """What to train and where: code lengths, frozen backbone, device, precision, seed.

    ``init_from`` names an earlier run directory whose ``bits<K>/best.pt`` weights start the
    model of each code length (e.g. fine-tune end to end after a frozen-backbone run).
    ``freeze_backbone_bn`` keeps the backbone's batch-norm statistics at their pretrained
    values while it is fine-tuned (small batches estimate them poorly). ``shared_encoder`` trains
    every code length as a hash head of one encoder, once, instead of one model per code length
    (the paper's way, the default); each code length is still selected and saved on its own.
    ``cached_views`` (frozen backbone) caches that many augmented views of every training image
    (random resized crops and flips, as in fine-tuning) beside its plain view; each epoch draws
    one of an image's ``1 + cached_views`` feature maps at random. Computed once and kept in the
    cache (in float16), for the price of encoding the training images that many more times. A
    backbone that is fine-tuned sees freshly augmented images instead; no views are cached.
    ``eval_every`` validates (and selects) every that many epochs and after the last; with a
    fine-tuned backbone each validation encodes the whole training split again. ``log_every``:
    the steps' loss terms stay on the device and are read back, logged and checked for NaN every
    that many steps and at the end of each epoch (each read makes a GPU's host wait for it).
    ``feature_flip`` mirrors cached feature maps at random (frozen backbone). Mirroring only
    permutes the spatial nodes, and heads with a feature-space graph or the grid are invariant to
    that (the layers see node features, never positions; the grid is mirror-symmetric): with the
    cpu preset the codes of mirrored maps are identical. It matters for image-space kNN, which
    breaks distance ties by node order, and for custom layers that use positions; real
    augmentation of a frozen backbone is ``cached_views``. ``frozen_stages`` (a backbone that is
    fine-tuned) keeps the stem and that many of the backbone's first feature stages at their
    pretrained weights and statistics, training the rest (and skipping those stages' backward
    pass); 0 trains them all.
    """

    bits: List[int] = field(default_factory=lambda: [12, 24, 32, 48])
    frozen_backbone: bool = False
    amp: bool = False
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    log_every: int = 50
    cache_dir: Optional[str] = None
    feature_flip: bool = True
    init_from: Optional[str] = None
    freeze_backbone_bn: bool = True
    shared_encoder: bool = False
    cached_views: int = 0
    frozen_stages: int = 0

    def validate(self, prefix: str = "train") -> None:
        require(len(self.bits) >= 1, f"{prefix}.bits", "needs at least one code length")
        for i, b in enumerate(self.bits):
            require(b >= 1, f"{prefix}.bits[{i}]", f"must be a positive number of bits, got {b}")
        require(len(set(self.bits)) == len(self.bits), f"{prefix}.bits", f"has repeated code lengths: {self.bits}")
        require(self.device in ("auto", "cpu") or self.device.startswith("cuda"), f"{prefix}.device",
                 f"expected 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        require(self.eval_every >= 1, f"{prefix}.eval_every", f"must be >= 1, got {self.eval_every}")
        require(self.log_every >= 1, f"{prefix}.log_every", f"must be >= 1, got {self.log_every}")
        require(self.cached_views >= 0, f"{prefix}.cached_views", f"must be >= 0, got {self.cached_views}")
        require(self.frozen_stages >= 0, f"{prefix}.frozen_stages", f"must be >= 0, got {self.frozen_stages}")
        require(not (self.shared_encoder and self.init_from is not None), f"{prefix}.init_from",
                "starts separate models; it cannot be combined with train.shared_encoder=true")
        if self.init_from is not None:
            run = Path(self.init_from).expanduser()
            missing = [b for b in self.bits if not (run / f"bits{b}" / "best.pt").is_file()]
            require(not missing, f"{prefix}.init_from",
                     f"{self.init_from!r} must be a run directory with bits<K>/best.pt for every code length; "
                     f"missing for {missing}")


@dataclass
class EvalConfig:
    """Evaluation: the encoding batch size and the metrics reported besides mAP@all.

    Training's evaluation and ``gdf-pyg eval`` encode in batches of ``batch_size`` in
    float32, so both compute the same codes. ``auto`` is chosen for the device when a run
    starts (:func:`~gdf_pyg.data.loading.auto_eval_batch_size`: 8 on a CPU, the fastest on 2 cores
    (benchmarks/pipeline.py); 64 to 256 on a GPU) and written into the run's ``config.yaml``, so
    that ``gdf-pyg eval`` encodes the run's images in the batches training did.
    """

    topks: List[int] = field(default_factory=lambda: [100, 1000])
    radius: int = 2
    batch_size: Union[int, str] = "auto"

    def validate(self, prefix: str = "eval") -> None:
        require(self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1),
                f"{prefix}.batch_size", f"must be >= 1 or 'auto', got {self.batch_size!r}")
        for i, k in enumerate(self.topks):
            require(k >= 1, f"{prefix}.topks[{i}]", f"must be >= 1, got {k}")
        require(self.radius >= 0, f"{prefix}.radius", f"must be >= 0, got {self.radius}")


@dataclass
class TrainConfig:
    """A whole training run: model, data, optimiser, losses, training and evaluation."""

    model: GDFNetConfig = field(default_factory=GDFNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        self.model.validate("model")
        self.data.validate("data")
        self.optim.validate("optim")
        self.train.validate("train")
        self.eval.validate("eval")
        self.loss.validate("loss")
        require(not self.loss.distill or self.train.shared_encoder, "loss.distill",
                "distils the shorter heads of a shared encoder from the longest; it needs train.shared_encoder=true")
        require(not self.model.hash_similarity_min_bits or self.loss.similarity > 0, "loss.similarity",
                f"must be > 0 with model.hash_similarity_min_bits={self.model.hash_similarity_min_bits}: it is what "
                "keeps the backbone's similarities")
        if self.model.hash_similarity_detached:
            class_bits = [b for b in self.train.bits if not similarity_bits_of(self.model, b)]
            require(self.train.shared_encoder and bool(class_bits), "model.hash_similarity_detached",
                    "leaves the encoder to the heads of class codes: it needs train.shared_encoder=true and a code "
                    f"length below model.hash_similarity_min_bits={self.model.hash_similarity_min_bits} "
                    f"(train.bits={self.train.bits}, train.shared_encoder={str(self.train.shared_encoder).lower()})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        cfg = from_dict(cls, data)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
             preset: Optional[str] = None) -> "TrainConfig":
        """A preset and/or a YAML file (the file's keys win), then dotted overrides."""
        data: Dict[str, Any] = load_preset_dict(preset) if preset else {}
        if path is not None:
            data = merge(data, load_yaml(path))
        return cls.from_dict(apply_overrides(data, overrides))

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)
