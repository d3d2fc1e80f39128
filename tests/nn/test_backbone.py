from __future__ import annotations

import torch
import pytest
from PIL import Image

from gdf_pyg.nn.backbone import FeatureBackbone, WeightsUnavailableError, create_timm_model

from ..conftest import BIRDS, LITE0_WEIGHTS, TINY_BACKBONE, needs_birds, needs_shared_weights

# ImageNet-1k classes that are also BIRDS-525 species.
IMAGENET_BIRDS = {
    "OSTRICH": 9, "EUROPEAN GOLDFINCH": 11, "INDIGO BUNTING": 14, "BALD EAGLE": 22, "PEACOCK": 84,
    "SCARLET MACAW": 88, "AMERICAN FLAMINGO": 130, "EMPEROR PENGUIN": 145, "ALBATROSS": 146,
}


def test_feature_backbone_reads_channels_from_feature_info():
    for index, channels in [(-1, 64), (-2, 48), (2, 32)]:
        bb = FeatureBackbone(TINY_BACKBONE, pretrained=False, out_index=index)
        assert bb.channels == channels
        fmap = bb(torch.randn(2, 3, 64, 64))
        assert fmap.shape == (2, channels, 64 // bb.reduction, 64 // bb.reduction)
        assert bb.feature_size(64) == tuple(fmap.shape[-2:])


def test_unreachable_hub_gives_clear_error():
    with pytest.raises(WeightsUnavailableError, match="pass weights_file=PATH"):
        create_timm_model(TINY_BACKBONE, pretrained=True)


def test_local_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_timm_model(TINY_BACKBONE, weights_file=tmp_path / "missing.safetensors")
    bad = tmp_path / "weights.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="expected one of"):
        create_timm_model(TINY_BACKBONE, weights_file=bad)
    with pytest.raises(ValueError, match="not_a_model"):
        create_timm_model("not_a_model", pretrained=False)


def test_state_dict_file_loads(tmp_path):
    src = create_timm_model(TINY_BACKBONE, pretrained=False)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    bb = FeatureBackbone(TINY_BACKBONE, weights_file=str(path))
    own = bb.model.state_dict()
    assert torch.equal(own["conv_stem.weight"], src.state_dict()["conv_stem.weight"])


@needs_shared_weights
@needs_birds
def test_local_imagenet_weights_predict_birds():
    import timm

    model = create_timm_model("tf_efficientnet_lite0", weights_file=LITE0_WEIGHTS).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    transform = timm.data.create_transform(**cfg)
    images, expected = [], []
    for species, cls in IMAGENET_BIRDS.items():
        for name in ("1.jpg", "2.jpg"):
            images.append(transform(Image.open(BIRDS / species / name).convert("RGB")))
            expected.append(cls)
    with torch.no_grad():
        predicted = model(torch.stack(images)).argmax(-1)
    assert predicted.tolist() == expected

    # The feature backbone holds the same weights, and its map matches the classifier's stage.
    bb = FeatureBackbone("tf_efficientnet_lite0", weights_file=str(LITE0_WEIGHTS)).eval()
    full = model.state_dict()
    for key, value in bb.model.state_dict().items():
        assert torch.equal(value, full[key]), key
    with torch.no_grad():
        x = torch.stack(images[:2])
        # Same weights; channels-last convolutions only reorder the float sums.
        torch.testing.assert_close(bb(x), model.blocks(model.bn1(model.conv_stem(x))), atol=1e-4, rtol=1e-3)


def test_frozen_stages_keep_the_stem_and_first_stages_out_of_training():
    bb = FeatureBackbone(TINY_BACKBONE, pretrained=False)
    assert bb.num_stages == 5
    count = bb.freeze_stages(2)
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    # the stem and blocks 0 and 1 (the second stage ends at blocks.1), nothing after
    expected = {n for n, _ in bb.named_parameters()
                if n.startswith(("model.conv_stem.", "model.bn1.", "model.blocks.0.", "model.blocks.1."))}
    assert frozen == expected and count == sum(p.numel() for n, p in bb.named_parameters() if n in expected)
    assert "frozen_stages=2" in repr(bb)
    # no gradient reaches them; the later stages get one
    bb.train()
    bb(torch.randn(2, 3, 64, 64)).square().mean().backward()
    grads = {n: p.grad for n, p in bb.named_parameters()}
    assert all(grads[n] is None for n in frozen)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n not in frozen and "weight" in n)
    # their batch statistics stay put in training mode; the later stages' move
    assert not bb.model.bn1.training and not bb.model.blocks[1][0].bn1.training
    assert bb.model.blocks[2][0].bn1.training
    before = bb.model.blocks[0][0].bn1.running_mean.clone(), bb.model.blocks[2][0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert torch.equal(bb.model.blocks[0][0].bn1.running_mean, before[0])
    assert not torch.equal(bb.model.blocks[2][0].bn1.running_mean, before[1])
    # 0 frees every stage again
    assert bb.freeze_stages(0) == 0 and all(p.requires_grad for p in bb.parameters()) and bb.model.bn1.training


def test_frozen_stages_out_of_range_name_the_backbone():
    from gdf_pyg.nn.backbone import num_stages_of

    assert num_stages_of(TINY_BACKBONE) == 5 and num_stages_of("resnet18") == 5
    with pytest.raises(ValueError, match=r"frozen_stages must be in \[0, 5\].*test_efficientnet.*got 6"):
        FeatureBackbone(TINY_BACKBONE, pretrained=False).freeze_stages(6)
    # a ResNet's stem ends in modules without weights (act1): its first stage is conv1 and bn1
    bb = FeatureBackbone("resnet18", pretrained=False)
    bb.freeze_stages(1)
    assert {n for n, p in bb.named_parameters() if not p.requires_grad} == {
        "model.conv1.weight", "model.bn1.weight", "model.bn1.bias"}
