from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from gdf_pyg.data import decode_size, eval_transform, stack_images, train_transform
from gdf_pyg.data.records import load_image
from gdf_pyg.nn.backbone import FeatureBackbone

from ..conftest import write_image


def image_config(size: int, crop_pct: float = 0.875, interpolation: str = "bicubic"):
    """A timm data config as a backbone's ``image_config`` returns it."""
    return {"input_size": (3, size, size), "interpolation": interpolation, "mean": (0.5,) * 3, "std": (0.5,) * 3,
            "crop_pct": crop_pct, "crop_mode": "center"}


@pytest.mark.parametrize("name, crop_pct, mean", [("tf_efficientnet_lite0", 0.875, (0.5, 0.5, 0.5)),
                                                  ("resnet50", 0.95, (0.485, 0.456, 0.406))])
def test_transform_follows_the_backbones_pretrained_config(name, crop_pct, mean):
    cfg = FeatureBackbone(name, pretrained=False).image_config(448)
    assert cfg["input_size"] == (3, 448, 448) and cfg["crop_pct"] == crop_pct and cfg["interpolation"] == "bicubic"
    assert tuple(cfg["mean"]) == pytest.approx(mean)
    steps = eval_transform(cfg).transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    assert resize.size == math.floor(448 / crop_pct) and resize.interpolation == T.InterpolationMode.BICUBIC
    assert not any(isinstance(t, T.Normalize) for t in steps)  # the backbone normalises whole batches


def test_transforms_give_pixels_and_the_backbone_normalises_them():
    img = Image.new("RGB", (90, 60), (255, 0, 51))
    for transform in (eval_transform(image_config(32)), train_transform(image_config(32))):
        out = transform(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        assert out[0].eq(255).all() and out[1].eq(0).all() and out[2].eq(51).all()
    batch = stack_images([eval_transform(image_config(32))(img)] * 4)
    assert batch.shape == (4, 3, 32, 32) and batch.is_contiguous(memory_format=torch.channels_last)
    backbone = FeatureBackbone("resnet50", pretrained=False)
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    expected = (torch.tensor([255.0, 0.0, 51.0]) / 255 - mean) / std
    normalised = backbone.normalize(batch)
    assert torch.allclose(normalised[:, :, 5, 7], expected.expand(4, 3), atol=1e-6)
    assert normalised.is_contiguous(memory_format=torch.channels_last)
    floats = torch.randn(2, 3, 8, 8)
    assert backbone.normalize(floats) is floats  # float images are taken as already normalised


def test_decode_size_keeps_what_the_transform_needs():
    assert decode_size(image_config(224), training=False) == (256, 256)  # ceil(224 / 0.875)
    assert decode_size(image_config(224), training=True) == (379, 379)  # ceil(224 / sqrt(0.35))


def test_jpeg_decoded_at_reduced_scale_keeps_the_requested_size(tmp_path):
    path = tmp_path / "big.jpg"
    write_image(path, 0, size=(1200, 900))
    assert load_image(path).size == (1200, 900)
    # 1/2 scale keeps both sides >= 256; 1/4 (300 x 225) would not.
    assert load_image(path, min_size=(256, 256)).size == (600, 450)
    assert load_image(path, min_size=(200, 200)).size == (300, 225)
    cropped = load_image(path, bbox=(0, 0, 600, 450), min_size=(256, 256))
    assert cropped.size == (600, 450)  # a box refers to the full-size image: no reduced decode
