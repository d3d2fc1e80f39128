from __future__ import annotations

import math

import pytest
import torch

from gdf_pyg.engine.checkpoint import load_checkpoint
from gdf_pyg.training.config import ConfigError, TrainConfig
from gdf_pyg.training import train

from ..conftest import TINY_RUN

TINY = [*TINY_RUN, "optim.epochs=1", "train.bits=[12]"]


def image_trainer(cfg, out, num_classes=2):
    """A 12-bit trainer on the images of ``cfg`` (built as a run builds it), on the CPU."""
    from gdf_pyg.models.gdfnet import GDFNet
    from gdf_pyg.training.run_data import build_run_data
    from gdf_pyg.training.trainer import Trainer, model_config_for

    data = build_run_data(cfg, GDFNet(model_config_for(cfg, 12, num_classes)).image_config)
    return Trainer.from_config(cfg, 12, data, out, torch.device("cpu"))


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
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.amp=true", "optim.lr=0.01"])
    trainer = image_trainer(cfg, tmp_path)
    seen = []
    trainer.model.head.hash.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.model.backbone.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    items = [trainer.data.train_eval[i] for i in range(6)]
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


def test_cached_views_are_augmented_reproducible_and_drawn_per_image(tmp_path, folder_root):
    from gdf_pyg.models.gdfnet import GDFNet
    from gdf_pyg.training.run import cached_features
    from gdf_pyg.training.run_data import build_run_data
    from gdf_pyg.training.trainer import Trainer, model_config_for

    cpu = torch.device("cpu")
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.frozen_backbone=true",
                                      "train.cached_views=2", "train.feature_flip=false"])
    torch.manual_seed(0)
    probe = GDFNet(model_config_for(cfg, 12, 3)).eval()
    data = build_run_data(cfg, probe.image_config)
    torch.manual_seed(7)
    feats = cached_features(cfg, data, probe.backbone, cpu, tmp_path / "a")
    drawn_after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(drawn_after, torch.rand(3))  # the generators are left as they were found
    assert set(feats) == {"train", "test", "view1", "view2"}
    plain_row = {int(p): row for row, p in enumerate(feats["train"].positions)}
    for name in ("view1", "view2"):
        view = feats[name]
        assert torch.equal(view.positions, data.fit_pos)  # every image the model trains on, none of validation's
        rows = torch.tensor([plain_row[int(p)] for p in view.positions])
        assert view.values.shape == feats["train"].values[rows].shape and view.values.dtype == torch.float16
        assert not torch.allclose(view.values.float(), feats["train"].values[rows], atol=1e-2)  # random crops
    assert not torch.allclose(feats["view1"].values, feats["view2"].values)
    # The plain features keep their own file (shared with runs without views); a second cache is identical.
    assert len(list((tmp_path / "a").glob("features-*.pt"))) == 1 and len(list((tmp_path / "a").glob("views-*.pt"))) == 1
    again, reloaded = cached_features(cfg, data, probe.backbone, cpu, tmp_path / "b"), cached_features(cfg, data, probe.backbone, cpu,
                                                                                              tmp_path / "a")
    assert set(reloaded) == set(feats)
    assert all(torch.equal(s[k].values, feats[k].values) and torch.equal(s[k].positions, feats[k].positions)
               for s in (again, reloaded) for k in feats)

    trainer = Trainer.from_config(cfg, 12, data, tmp_path / "run", cpu, feats)
    shards = trainer.batches.shards()
    for (rows, _, view), (fmap, labels) in zip(shards, trainer.batches.feature_batches(shards)):
        sets = [feats["train"], feats["view1"], feats["view2"]]
        for i, (r, v) in enumerate(zip(rows.tolist(), view.tolist())):
            pos = int(data.fit_pos[r])
            row = int((sets[v].positions == pos).nonzero())
            assert torch.equal(fmap[i], sets[v].values[row].float()) and labels[i] == data.train_labels[pos]
    drawn = torch.cat([view for _ in range(5) for _, _, view in trainer.batches.shards()])
    assert set(drawn.tolist()) == {0, 1, 2}  # every view is drawn, epoch after epoch

    # Without views every image takes its plain view, and the permutation and flips are unchanged.
    plain_cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.frozen_backbone=true",
                                            "train.feature_flip=false"])
    plain = Trainer.from_config(plain_cfg, 12, data, tmp_path / "run0", cpu, {k: feats[k] for k in ("train", "test")})
    plain_shards = plain.batches.shards()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not b[2].any()
               for a, b in zip(shards, plain_shards))
    # ... and its batches are the cache's rows as stored, layout included (the layout decides the
    # rounding downstream, so runs without views train exactly as before views existed).
    cache_layout = feats["train"].values.is_contiguous(memory_format=torch.channels_last)
    for (rows, _, _), (fmap, _) in zip(plain_shards, plain.batches.feature_batches(plain_shards)):
        expected = feats["train"].values[torch.tensor([plain_row[int(data.fit_pos[r])] for r in rows.tolist()])]
        assert torch.equal(fmap, expected)
        assert fmap.is_contiguous(memory_format=torch.channels_last) == cache_layout


def test_cached_views_only_with_a_frozen_backbone(tmp_path, folder_root):
    with pytest.raises(ConfigError, match="train.cached_views: must be >= 0, got -1"):
        TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.frozen_backbone=true",
                                    "train.cached_views=-1"])
    # Fine-tuning augments the images themselves: a preset's views draw nothing and cache nothing.
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.cached_views=2"])
    trainer = image_trainer(cfg, tmp_path, num_classes=3)
    assert not any(view.any() for _ in range(5) for _, _, view in trainer.batches.shards())
    train(cfg, tmp_path / "run")
    assert not list((tmp_path / "run").rglob("views-*.pt"))


def test_an_epoch_reports_the_time_it_waited_for_data(folder_root, tmp_path):
    import time

    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY])
    trainer = image_trainer(cfg, tmp_path)
    fast = trainer.train_epoch()
    batches = trainer.train_batches

    def slow_loader():
        for batch in batches():
            time.sleep(0.5)  # a loader far slower than the tiny model's step
            yield batch

    trainer.train_batches = slow_loader
    slow = trainer.train_epoch()
    assert 0.0 <= fast["data_wait"] < slow["data_wait"] <= 1.0
    assert slow["data_wait"] > 0.5 and slow["seconds"] > 0.5 * trainer.batches.steps_per_epoch


def test_posterior_head_trains_its_class_classifier(tmp_path, folder_root):
    # the single-model trainer passes the class logits to the loss: its term moves the class classifier
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "model.hash_input=posterior",
                                      "train.frozen_backbone=false"])
    trainer = image_trainer(cfg, tmp_path)
    out = trainer.model(torch.randn(4, 3, 64, 64))
    terms = trainer.losses(out, torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(terms["posterior"], torch.nn.functional.cross_entropy(out.class_logits,
                                                                                    torch.tensor([0, 1, 2, 0])))
    terms["posterior"].backward()
    assert trainer.model.head.class_classifier.weight.grad.abs().sum() > 0


def test_augmentations_do_not_depend_on_the_workers_and_workers_persist(tmp_path, folder_root):
    epochs = {}
    for workers in (0, 2):
        cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, f"data.num_workers={workers}"])
        trainer = image_trainer(cfg, tmp_path)
        torch.manual_seed(1)  # the trainer's own generators are left alone by loading
        draws = []
        for epoch in range(2):
            trainer.epoch = epoch
            draws.append([(images, labels, sizes) for images, labels, sizes in trainer.train_batches()])
            if workers:
                if epoch == 0:
                    first = (trainer.batches._image_loader, trainer.batches._image_loader._iterator._workers)
                else:  # the same loader and the same worker processes serve the next epoch
                    assert trainer.batches._image_loader is first[0] and trainer.batches._image_loader._iterator._workers == first[1]
        epochs[workers] = draws, torch.rand(1)
    (zero, after0), (two, after2) = epochs[0], epochs[2]
    assert torch.equal(after0, after2)
    for a_epoch, b_epoch in zip(zero, two):
        for (a, la, sa), (b, lb, sb) in zip(a_epoch, b_epoch):
            assert torch.equal(a, b) and torch.equal(la, lb) and sa == sb == [len(la)]
    assert not torch.equal(zero[0][0][0], zero[1][0][0])  # epochs draw anew


def test_a_run_records_its_eval_batch_and_validation_time(tmp_path, folder_root):
    import json

    import yaml

    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "optim.epochs=2", "train.eval_every=2"])
    assert cfg.eval.batch_size == "auto" and cfg.data.num_workers == "auto"
    train(cfg, tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["eval"]["batch_size"] == 8  # chosen for the CPU, recorded for gdf-pyg eval
    assert saved["data"]["num_workers"] == "auto"  # chosen again wherever the run continues
    history = load_checkpoint(tmp_path / "bits12" / "last.pt")["history"]
    assert ["val_map" in h for h in history] == [False, True]  # validated every 2 epochs
    result = json.loads((tmp_path / "bits12" / "result.json").read_text())
    validation = sum(h["val_seconds"] for h in history)
    assert validation > 0 and result["validation_seconds"] == pytest.approx(validation)
    assert result["validation_fraction"] == pytest.approx(validation / (validation + result["train_seconds"]))


def test_the_feature_cache_is_keyed_on_what_changes_the_features(tmp_path, folder_root):
    from gdf_pyg.nn.backbone import FeatureBackbone, image_config_of
    from gdf_pyg.training.run import cached_features, feature_cache_identity
    from gdf_pyg.training.run_data import build_run_data

    cpu = torch.device("cpu")

    def cache(*overrides, folder="cache"):
        cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.frozen_backbone=true", *overrides])
        data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size))
        torch.manual_seed(cfg.train.seed)  # a randomly initialised backbone, as a run builds it
        backbone = FeatureBackbone(cfg.model.backbone.name, pretrained=False)
        return cfg, data, cached_features(cfg, data, backbone, cpu, tmp_path / folder)

    cfg, data, seed0 = cache()
    identity = feature_cache_identity(cfg, data, cpu, 8)
    assert identity["device"] == "cpu" and identity["seed"] == 0 and identity["skip_bad_images"] is False
    assert set(identity["versions"]) == {"gdf_pyg", "torch", "timm"}
    _, _, seed1 = cache("train.seed=1")  # another random backbone: other maps, another file
    assert not torch.equal(seed0["train"].values, seed1["train"].values)
    cache("data.skip_bad_images=true")
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 3
    # Augmented views follow the run's seed, and not the data workers.
    views = {(seed, workers): cache(f"train.seed={seed}", f"data.num_workers={workers}", "train.cached_views=1",
                                    folder=f"views{seed}{workers}")[2]["view1"].values
             for seed, workers in ((0, 0), (1, 0), (0, 2))}
    assert not torch.equal(views[0, 0], views[1, 0]) and torch.equal(views[0, 0], views[0, 2])


def test_frozen_stages_train_only_the_later_stages(tmp_path, folder_root):
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.frozen_stages=3",
                                      "train.freeze_backbone_bn=false", "optim.backbone_lr=0.01"])
    trainer = image_trainer(cfg, tmp_path)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in trainer.model.backbone.parameters() if not p.requires_grad)
    trainer.fit()
    end = trainer.model.state_dict()
    changed = {k for k in start if k.startswith("backbone.") and not torch.equal(start[k], end[k])}
    early = ("backbone.model.conv_stem.", "backbone.model.bn1.", *(f"backbone.model.blocks.{i}." for i in range(3)))
    assert changed and not any(k.startswith(early) for k in changed)
    assert any(k.startswith("backbone.model.blocks.3.") and k.endswith("running_mean") for k in changed)


def test_frozen_stages_beyond_the_backbone_stop_before_work(tmp_path, folder_root):
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.frozen_stages=6"])
    with pytest.raises(ConfigError, match="train.frozen_stages: 'test_efficientnet' has 5 feature stages; got 6"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="train.frozen_stages: must be >= 0, got -1"):
        TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY, "train.frozen_stages=-1"])
