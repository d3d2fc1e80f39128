"""Image transforms built by timm from a backbone's data config.

The interpolation and crop fraction come from timm's data config of the backbone
(:meth:`gdf_pyg.nn.backbone.FeatureBackbone.image_config`), so each backbone is fed as it was
trained; only the input size is ours (``model.img_size``). As with timm's prefetcher, the
transforms end in uint8 pixels, ``(3, S, S)`` views of height-width-channel memory:
:func:`stack_images` stacks them into a channels-last batch without moving a byte across, and
the backbone normalises the batch with its mean and std in one vectorised step
(:class:`~gdf_pyg.nn.backbone.FeatureBackbone`), which costs less than normalising image by
image and hands the convolutions the channels-last layout they run fastest in on a CPU.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence, Tuple

import torch
from PIL import Image
from timm.data import create_transform

__all__ = ["TRAIN_SCALE", "decode_size", "eval_transform", "stack_images", "train_transform"]

# Random resized crops keep at least this fraction of the image: fine-grained parts are small.
TRAIN_SCALE = (0.35, 1.0)

Transform = Callable[[Image.Image], torch.Tensor]


def eval_transform(image_config: Mapping[str, Any]) -> Transform:
    """Resize to ``img_size / crop_pct`` and centre-crop ``img_size`` (timm's evaluation
    transform); uint8 pixels out."""
    return create_transform(**image_config, is_training=False, use_prefetcher=True)


def train_transform(image_config: Mapping[str, Any]) -> Transform:
    """Random resized crop (:data:`TRAIN_SCALE`) and horizontal flip; no colour jitter,
    since colour often tells fine-grained classes apart."""
    cfg = {k: v for k, v in image_config.items() if k not in ("crop_pct", "crop_mode")}
    return create_transform(**cfg, is_training=True, scale=TRAIN_SCALE, hflip=0.5, color_jitter=None,
                            use_prefetcher=True)


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """A batch ``(B, 3, H, W)`` of equally sized images. uint8 images from these transforms are
    stacked in height-width-channel order, so the batch is channels-last contiguous; others
    (float tensors, e.g. the synthetic set's) are stacked as they are."""
    if images and images[0].dtype == torch.uint8:
        return torch.stack([img.permute(1, 2, 0) for img in images]).permute(0, 3, 1, 2)
    return torch.stack(list(images))


def decode_size(image_config: Mapping[str, Any], training: bool) -> Tuple[int, int]:
    """The smallest decoded size that loses nothing for the transform: JPEGs may be decoded at
    a reduced scale as long as both sides stay at least this large."""
    size = int(image_config["input_size"][-1])
    side = size / math.sqrt(TRAIN_SCALE[0]) if training else size / float(image_config.get("crop_pct") or 1.0)
    side = int(math.ceil(side))
    return side, side
