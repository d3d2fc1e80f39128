from __future__ import annotations

import math

import pytest
import torch

from gdf_pyg.training.checkpoint import load_checkpoint
from gdf_pyg.training.config import ConfigError, TrainConfig
from gdf_pyg.training import train

from ..conftest import TINY_BACKBONE, TINY_RUN

TINY = [*TINY_RUN, "optim.epochs=1", "train.bits=[12]"]


def backbone_bn_means(state):
    return {k: v for k, v in state.items() if k.startswith("backbone.") and k.endswith("running_mean")}


@pytest.mark.parametrize("freeze", [True, False])
def test_fine_tuning_keeps_or_updates_backbone_bn(tmp_path, folder_root, freeze):
    torch.manual_seed(0)
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", f"train.freeze_backbone_bn={str(freeze).lower()}",
                                      "optim.backbone_lr=0.0", *TINY])
    train(cfg, tmp_path)
    trained = backbone_bn_means(load_checkpoint(tmp_path / "bits12" / "last.pt")["model"])
    assert trained and all(torch.equal(v, torch.zeros_like(v)) for v in trained.values()) == freeze


def test_validation_happens_before_work(tmp_path, folder_root):
    with pytest.raises(ConfigError, match="model.graph.k: k=5 must be below the 4 nodes per image"):
        train(TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "model.graph.k=5"]), tmp_path / "a")
    assert not (tmp_path / "a" / "config.yaml").exists()
    with pytest.raises(ConfigError, match="data.root: .* is not a folder"):
        TrainConfig.load(overrides=[f"data.root={tmp_path}/none", *TINY])
    with pytest.raises(ConfigError, match="model.backbone.weights_file: .* does not exist"):
        TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "model.backbone.weights_file=/no/such.pt"])
    with pytest.raises(ConfigError, match=r"unknown key data.roots; allowed keys: \["):
        TrainConfig.load(overrides=[f"data.roots={folder_root}", *TINY])


def test_mixed_precision_trains_in_bf16_with_float32_losses(folder_root, tmp_path):
    from gdf_pyg.models.gdfnet import GDFNet
    from gdf_pyg.training.run_data import build_run_data
    from gdf_pyg.training.trainer import Trainer, model_config_for

    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.amp=true", "optim.lr=0.01"])
    data = build_run_data(cfg, GDFNet(model_config_for(cfg, 12, 2)).image_config)
    trainer = Trainer(cfg, 12, data, tmp_path, torch.device("cpu"))
    seen = []
    trainer.model.head.hash.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.model.backbone.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    items = [data.train_eval[i] for i in range(6)]
    images, labels = torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])
    trainer._set_train_mode()
    losses = []
    for _ in range(6):
        terms = trainer.backward(images, labels)
        trainer.optimizer_step()
        assert all(v.dtype == torch.float32 for v in terms.values())
        losses.append(float(terms["loss"]))
    assert set(seen) == {torch.bfloat16}  # the backbone and the hash layer ran under autocast
    assert losses[-1] < losses[0] and all(map(math.isfinite, losses))
