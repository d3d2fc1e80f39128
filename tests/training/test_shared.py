"""Every code length as a head of one shared encoder (train.shared_encoder)."""
from __future__ import annotations

import json

import pytest
import torch

from gdf_pyg.cli import main
from gdf_pyg.engine.checkpoint import load_checkpoint
from gdf_pyg.models.gdfnet import GDFNet, GDFNetConfig, SharedEncoderGDFNet
from gdf_pyg.nn.backbone import image_config_of
from gdf_pyg.training.config import ConfigError, TrainConfig
from gdf_pyg.training.run_data import build_run_data
from gdf_pyg.training.shared import SharedEncoderTrainer

from ..conftest import TINY_BACKBONE, TINY_RUN


@pytest.mark.parametrize("hash_hidden,hash_input", [(0, "features"), (24, "features"), (24, "posterior")])
def test_a_heads_codes_are_its_single_models_codes(hash_hidden, hash_input):
    cfg = GDFNetConfig.from_dict({"backbone": {"name": TINY_BACKBONE, "pretrained": False}, "img_size": 64,
                                  "graph": {"k": 3}, "aggregation": {"hidden_channels": 16}, "num_classes": 5,
                                  "hash_hidden": hash_hidden, "hash_input": hash_input})
    shared = SharedEncoderGDFNet(cfg, [12, 32]).eval()
    images = torch.randn(6, 3, 64, 64)
    out = shared(images)
    assert out.codes.shape == (6, 44) and out.logits.shape == (6, 10)
    assert (out.class_logits is None) == (hash_input == "features")
    if out.class_logits is not None:
        assert out.class_logits.shape == (6, 10)
    for bits, codes in shared.split(shared.encode(images)).items():
        single = GDFNet(GDFNetConfig.from_dict({**cfg.to_dict(), "bits": bits})).eval()
        single.load_state_dict(shared.single_state(bits))
        assert torch.equal(single.encode(images), codes)


def test_shared_run_saves_and_evaluates_each_code_length_as_a_plain_model(tmp_path, folder_root):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--no-progress", f"data.root={folder_root}", "train.bits=[12,16]",
            "train.frozen_backbone=true", "train.shared_encoder=true", *TINY_RUN, "optim.epochs=30",
            "data.val_fraction=0", "train.cached_views=1"]
    assert main(args) == 0
    assert len(list((run / "cache").glob("views-*.pt"))) == 1  # trained on augmented views too
    trained = json.loads((run / "metrics.json").read_text())["results"]
    assert (run / "shared" / "last.pt").is_file() and not list(run.glob("bits*/last.pt"))
    for bits in (12, 16):
        state = load_checkpoint(run / f"bits{bits}" / "best.pt")
        assert state["bits"] == bits and not any(k.startswith("heads.") for k in state["model"])
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval"), "--topk", "5", "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]
    for bits in ("12", "16"):
        assert evaluated[bits]["metrics"] == trained[bits]["metrics"]


def _trainer(folder_root, out, *overrides):
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "train.bits=[12,16]",
                                      "train.frozen_backbone=false", "train.shared_encoder=true", "optim.epochs=3",
                                      *overrides])
    data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size))
    return SharedEncoderTrainer.from_config(cfg, [12, 16], data, out, torch.device("cpu"))


def stop_in_epoch(trainer, epoch: int) -> None:
    """Runs ``trainer.fit()`` until it is interrupted at the start of ``epoch`` (from 1)."""
    calls = {"n": 0}
    original = trainer.train_epoch

    def interrupted():
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return original()

    trainer.train_epoch = interrupted
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def test_shared_run_resumes_exactly(tmp_path, folder_root):
    whole = _trainer(folder_root, tmp_path / "a")
    whole.fit()
    cut = _trainer(folder_root, tmp_path / "b")
    stop_in_epoch(cut, 3)
    resumed = _trainer(folder_root, tmp_path / "b")
    resumed.resume(tmp_path / "b" / "last.pt")
    assert resumed.epoch == 2
    resumed.fit()
    assert resumed.best_epoch == whole.best_epoch
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    for bits in (12, 16):  # each code length's selected weights, value for value
        assert resumed.best_state[bits].keys() == whole.best_state[bits].keys()
        for key, value in whole.best_state[bits].items():
            assert torch.equal(resumed.best_state[bits][key], value), (bits, key)


def test_the_final_models_are_built_without_reading_pretrained_weights_again(tmp_path, folder_root, monkeypatch):
    import gdf_pyg.nn.backbone as backbone

    weights = tmp_path / "weights.pt"
    torch.save(backbone.create_timm_model("test_efficientnet", pretrained=False).state_dict(), weights)
    loads = []
    original = backbone.create_timm_model
    monkeypatch.setattr(backbone, "create_timm_model", lambda name, **kw: loads.append(
        kw.get("weights_file") is not None) or original(name, **kw))
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", f"data.root={folder_root}", "train.bits=[12,16]",
                 "train.frozen_backbone=true", "train.shared_encoder=true", *TINY_RUN, "optim.epochs=1",
                 f"model.backbone.weights_file={weights}"]) == 0
    # the backbone of the feature cache and the shared model: the file is read twice, never for the
    # plain model of each code length, whose weights are the trained ones
    assert loads.count(True) == 2 and len(loads) == 4


def test_shared_encoder_does_not_start_from_separate_models(tmp_path, folder_root):
    with pytest.raises(ConfigError, match="train.init_from: starts separate models"):
        TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "train.shared_encoder=true",
                                    f"train.init_from={tmp_path}"])


def test_distillation_teaches_the_short_heads_from_the_longest(tmp_path, folder_root):
    from gdf_pyg.nn.losses import distillation_loss

    trainer = _trainer(folder_root, tmp_path, "loss.distill=0.5", "loss.distill_temperature=3.0")
    model = trainer.model.train()
    images = torch.randn(4, 3, 64, 64)
    out = model(images)
    terms = trainer.losses(out, torch.tensor([0, 1, 0, 1]))
    z12, z16 = out.logits.split(trainer.data.num_classes, dim=1)
    torch.testing.assert_close(terms["distill"], 0.5 * distillation_loss(z12, z16, 3.0))
    model.zero_grad()
    terms["distill"].backward()
    assert model.heads["12"].classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.heads["16"].parameters())  # the teacher


def test_distillation_needs_a_shared_encoder(folder_root):
    with pytest.raises(ConfigError, match="loss.distill: .*needs train.shared_encoder=true"):
        TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "loss.distill=1.0"])


def test_each_posterior_heads_classifier_has_its_cross_entropy(tmp_path, folder_root):
    trainer = _trainer(folder_root, tmp_path, "model.hash_input=posterior", "loss.posterior=0.5")
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    out = trainer.model(images)
    terms = trainer.losses(out, labels)
    classes = trainer.data.num_classes
    heads = out.class_logits.split(classes, dim=1)
    want = sum(0.5 * torch.nn.functional.cross_entropy(z, labels) for z in heads)
    torch.testing.assert_close(terms["posterior"], want)
    codes, logits = trainer.model.split(out.codes), out.logits.split(classes, dim=1)
    for i, bits in enumerate((12, 16)):
        torch.testing.assert_close(terms[f"loss@{bits}"], trainer.loss_fn(codes[bits], logits[i], labels, heads[i])["loss"])


def test_codes_from_the_similarity_min_bits_keep_the_backbones_similarities(tmp_path, folder_root):
    from gdf_pyg.nn.losses import similarity_preserving_loss

    trainer = _trainer(folder_root, tmp_path, "model.hash_input=posterior", "model.hash_similarity_min_bits=16",
                       "loss.similarity=2.0", "loss.similarity_classes=true", "loss.classification=0",
                       "loss.posterior=0", "loss.quantization=0", "loss.balance=0")
    model = trainer.model.train()
    assert [model.heads[b].similarity_bits for b in ("12", "16")] == [0, 16]
    assert model.heads["12"].similarity is None
    out = model(torch.randn(4, 3, 64, 64))
    labels = torch.tensor([0, 1, 2, 0])
    terms = trainer.losses(out, labels)
    # the 16-bit head alone, all of its bits, same-class pairs with target 1
    torch.testing.assert_close(terms["similarity"],
                               2.0 * similarity_preserving_loss(model.split(out.codes)[16], out.pooled, labels))
    model.zero_grad()
    terms["loss"].backward()
    assert model.heads["16"].similarity.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.heads["12"].parameters())


@pytest.mark.parametrize("detached", [False, True])
def test_detached_similarity_heads_leave_the_encoder_to_the_class_code_heads(tmp_path, folder_root, detached):
    trainer = _trainer(folder_root, tmp_path, "model.hash_input=posterior", "model.hash_similarity_min_bits=16",
                       "loss.similarity=1.0", f"model.hash_similarity_detached={str(detached).lower()}")
    model = trainer.model.train()
    torch.manual_seed(0)
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    terms = trainer.losses(model(images), labels)
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]

    def grads(loss):
        model.zero_grad()
        loss.backward(retain_graph=True)
        return [p.grad for p in encoder], [p.grad for p in model.heads["16"].parameters()]

    from_similarity_head, own = grads(terms["loss@16"])
    # the 16-bit head (similarity bits) trains itself either way; the encoder only when attached
    assert any(g is not None and g.any() for g in own)
    assert any(g is not None and g.any() for g in from_similarity_head) != detached
    from_class_head, _ = grads(terms["loss@12"])
    assert any(g is not None and g.any() for g in from_class_head)
    # the forward is the same: detaching changes the gradients alone
    model.eval()
    codes = model(images).codes
    model.config.hash_similarity_detached = not detached
    torch.testing.assert_close(model(images).codes, codes)


def test_detached_similarity_heads_need_a_class_code_head_on_a_shared_encoder(folder_root):
    base = [f"data.root={folder_root}", *TINY_RUN, "train.bits=[12,16]", "loss.similarity=1",
            "model.hash_similarity_detached=true"]
    with pytest.raises(ConfigError, match="model.hash_similarity_detached: .* needs model.hash_similarity_min_bits > 0"):
        TrainConfig.load(overrides=base)
    with pytest.raises(ConfigError, match=r"model.hash_similarity_detached: .*train.shared_encoder=false"):
        TrainConfig.load(overrides=[*base, "model.hash_similarity_min_bits=16", "train.shared_encoder=false"])
    with pytest.raises(ConfigError, match=r"model.hash_similarity_detached: .*train.bits=\[12, 16\]"):
        TrainConfig.load(overrides=[*base, "model.hash_similarity_min_bits=12", "train.shared_encoder=true"])
    cfg = TrainConfig.load(overrides=[*base, "model.hash_similarity_min_bits=16", "train.shared_encoder=true"])
    assert cfg.model.hash_similarity_detached


def test_the_similarity_min_bits_need_the_similarity_term(folder_root):
    with pytest.raises(ConfigError, match="loss.similarity: must be > 0 with model.hash_similarity_min_bits=16"):
        TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "model.hash_similarity_min_bits=16"])
    with pytest.raises(ConfigError, match="model.hash_similarity_min_bits: must be >= 0"):
        TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "model.hash_similarity_min_bits=-1",
                                    "loss.similarity=1"])
