"""Image transforms built by timm from a backbone's data config.

The interpolation, crop fraction, mean and standard deviation come from timm's data config of
the backbone (:meth:`gdf_pyg.nn.backbone.FeatureBackbone.image_config`), so each backbone is
fed as it was trained; only the input size is ours (``model.img_size``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Tuple

import torch
from PIL import Image
from timm.data import create_transform

__all__ = ["TRAIN_SCALE", "decode_size", "eval_transform", "train_transform"]

# Random resized crops keep at least this fraction of the image: fine-grained parts are small.
TRAIN_SCALE = (0.35, 1.0)

Transform = Callable[[Image.Image], torch.Tensor]


def eval_transform(image_config: Mapping[str, Any]) -> Transform:
    """Resize to ``img_size / crop_pct`` and centre-crop ``img_size`` (timm's evaluation transform)."""
    return create_transform(**image_config, is_training=False)


def train_transform(image_config: Mapping[str, Any]) -> Transform:
    """Random resized crop (:data:`TRAIN_SCALE`) and horizontal flip; no colour jitter,
    since colour often tells fine-grained classes apart."""
    cfg = {k: v for k, v in image_config.items() if k not in ("crop_pct", "crop_mode")}
    return create_transform(**cfg, is_training=True, scale=TRAIN_SCALE, hflip=0.5, color_jitter=None)


def decode_size(image_config: Mapping[str, Any], training: bool) -> Tuple[int, int]:
    """The smallest decoded size that loses nothing for the transform: JPEGs may be decoded at
    a reduced scale as long as both sides stay at least this large."""
    size = int(image_config["input_size"][-1])
    side = size / math.sqrt(TRAIN_SCALE[0]) if training else size / float(image_config.get("crop_pct") or 1.0)
    side = int(math.ceil(side))
    return side, side
