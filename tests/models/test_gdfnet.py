from __future__ import annotations

import pytest
import torch

from gdf_pyg import GDFNet, GDFNetConfig, binarize
from gdf_pyg.utils.checks import ConfigError

from ..conftest import TINY_BACKBONE


def tiny_config(**overrides) -> GDFNetConfig:
    data = {
        "bits": 12, "num_classes": 5, "img_size": 64,
        "backbone": {"name": TINY_BACKBONE, "pretrained": False},
        "nodes": {"kind": "spatial"},
        "graph": {"method": "dynamic", "k": 3},
        "aggregation": {"hidden_channels": 16},
    }
    for key, value in overrides.items():
        section, _, name = key.rpartition("__")
        (data.setdefault(section, {}) if section else data)[name] = value
    return GDFNetConfig.from_dict(data)


@pytest.mark.parametrize("kind", ["spatial", "parts"])
@pytest.mark.parametrize("head", ["gdf", "global"])
def test_forward_shapes_and_codes(kind, head):
    model = GDFNet(tiny_config(nodes__kind=kind, nodes__num_parts=6, head=head))
    images = torch.randn(3, 3, 64, 64)
    out = model(images)
    assert out.codes.shape == (3, 12) and out.logits.shape == (3, 5)
    assert out.features.shape == (3, model.feature_dim)
    assert bool((out.codes.abs() < 1).all())
    codes = model.encode(images)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0} and codes.shape == (3, 12)
    assert model.training  # encode restores the mode
    with torch.no_grad():
        fmap = model.eval().forward_features(images)  # cached maps are computed in eval mode
    torch.testing.assert_close(model.encode_features(fmap), codes)


@pytest.mark.parametrize("graph, kind", [("dynamic", "spatial"), ("knn", "spatial"), ("grid", "spatial"),
                                         ("dynamic", "parts"), ("knn", "parts")])  # the grid needs spatial nodes
def test_heads_are_invariant_to_mirrored_feature_maps(graph, kind):
    # Why train.feature_flip changes nothing for the shipped heads: mirroring permutes the nodes.
    torch.manual_seed(0)
    model = GDFNet(tiny_config(nodes__kind=kind, nodes__num_parts=6, graph__method=graph)).eval()
    fmap = torch.randn(3, model.backbone.channels, 5, 5)
    with torch.no_grad():
        plain, mirrored = model.forward_head(fmap), model.forward_head(fmap.flip(-1))
        transposed = model.forward_head(fmap.transpose(-1, -2).contiguous())  # not a symmetry of every graph
    torch.testing.assert_close(mirrored.codes, plain.codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mirrored.logits, plain.logits, atol=1e-5, rtol=1e-5)
    if graph in ("dynamic", "knn") or kind == "parts":  # feature-space graphs: any node order
        torch.testing.assert_close(transposed.codes, plain.codes, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter():
    model = GDFNet(tiny_config(nodes__kind="parts", nodes__num_parts=6))
    out = model(torch.randn(4, 3, 64, 64))
    (out.codes.sum() + out.logits.pow(2).sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_binarize_maps_zero_to_plus_one():
    assert binarize(torch.tensor([-0.2, 0.0, 0.3])).tolist() == [-1.0, 1.0, 1.0]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.bits: must be a positive number of bits, got 0"):
        tiny_config(bits=0)
    with pytest.raises(ConfigError, match=r"model.aggregation.conv: 'gin' is not allowed; expected one of \["):
        tiny_config(aggregation__conv="gin")
    with pytest.raises(ConfigError, match="model.hash_hidden: must be >= 0 channels"):
        tiny_config(hash_hidden=-2)
    with pytest.raises(ConfigError, match=r"model.hash_input: 'logits' is not allowed; expected one of \['features', 'posterior'\]"):
        tiny_config(hash_input="logits")
    with pytest.raises(ConfigError, match="model.hash_posterior_scale: must be > 0, got -1"):
        tiny_config(hash_posterior_scale=-1)
    with pytest.raises(ConfigError, match="unknown key model.graph.kk"):
        tiny_config(graph__kk=3)
    with pytest.raises(ConfigError, match="model.graph.k: expected an integer, got 'many'"):
        tiny_config(graph__k="many")
    # 64 px / 32 = a 2 x 2 map: 4 nodes per image cannot have 8 neighbours.
    with pytest.raises(ConfigError, match="model.graph.k: k=8 must be below the 4 nodes per image"):
        GDFNet(tiny_config(graph__k=8))
    with pytest.raises(ConfigError, match="num_parts=3"):
        GDFNet(tiny_config(nodes__kind="parts", nodes__num_parts=3))
    with pytest.raises(ConfigError, match="'grid' needs spatial nodes"):
        tiny_config(nodes__kind="parts", graph__method="grid")


def test_presets_load():
    paper = GDFNetConfig.preset("paper")
    assert (paper.backbone.name, paper.img_size, paper.nodes.kind, paper.graph.k) == ("resnet50", 448, "parts", 3)
    cpu = GDFNetConfig.preset("cpu", ["bits=48"])
    assert cpu.backbone.name == "tf_efficientnet_lite0" and cpu.bits == 48
    with pytest.raises(ConfigError, match="unknown preset"):
        GDFNetConfig.preset("gpu")


def test_the_finetune_preset_is_the_cpu_preset_with_its_backbone_trained():
    from gdf_pyg.presets import load_preset_dict
    from gdf_pyg.utils.config_io import merge

    cpu, finetune = load_preset_dict("cpu"), load_preset_dict("finetune")
    assert "extends" not in finetune
    assert finetune["train"]["frozen_backbone"] is False and finetune["train"]["frozen_stages"] == 3
    # the cpu preset's model and losses, with class codes at every length (as it was measured)
    changes = {"optim": {"epochs": finetune["optim"]["epochs"], "backbone_lr": finetune["optim"]["backbone_lr"]},
               "train": {"frozen_backbone": False, "frozen_stages": 3, "eval_every": finetune["train"]["eval_every"]},
               "model": {"hash_similarity_min_bits": 0},
               "loss": {"similarity": 0.0, "similarity_classes": False}}
    assert cpu["model"]["hash_similarity_min_bits"] == 48 and cpu["loss"]["similarity"] > 0
    assert finetune == merge(cpu, changes)


def test_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  bits: 24\n  backbone:\n    name: {TINY_BACKBONE}\n    pretrained: false\n")
    cfg = GDFNetConfig.from_yaml(path, ["graph.k=5"])
    assert cfg.bits == 24 and cfg.graph.k == 5
    assert GDFNetConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml' is not valid YAML"):
        GDFNetConfig.from_yaml(tmp_path / "bad.yaml")


def test_exponent_notation_is_a_number():
    from gdf_pyg.training.config import TrainConfig

    cfg = TrainConfig.load(overrides=["optim.lr=1e-4", "optim.weight_decay=5E-4"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 5e-4
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got 'fast'"):
        TrainConfig.load(overrides=["optim.lr=fast"])


def test_capacity_control_head():
    cfg = GDFNetConfig.from_dict({"head": "mlp", "backbone": {"name": TINY_BACKBONE, "pretrained": False},
                                  "img_size": 64, "bits": 12, "num_classes": 3, "aggregation": {"hidden_channels": 16}})
    model = GDFNet(cfg)
    assert model.encoder.mlp is not None and model.encoder.aggregation is None
    assert model.feature_dim == 16 + model.backbone.channels
    out = model(torch.randn(4, 3, 64, 64))
    assert out.codes.shape == (4, 12) and out.logits.shape == (4, 3)


@pytest.mark.parametrize("kind", ["spatial", "parts"])
@pytest.mark.parametrize("hash_input", ["features", "posterior"])
def test_a_training_forward_and_backward_read_nothing_back(kind, hash_input):
    # What a GPU would wait on: every size comes from the batch layout, never from the data.
    from gdf_pyg.nn.losses import GDFLoss
    from gdf_pyg.utils.profiling import count_host_syncs

    model = GDFNet(tiny_config(nodes__kind=kind, nodes__num_parts=6, hash_input=hash_input)).train()
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    loss_fn = GDFLoss()
    with count_host_syncs() as count:
        out = model(images)
        loss_fn(out.codes, out.logits, labels, out.class_logits)["loss"].backward()
    assert count.total == 0, count.by_op
    assert all(p.grad is not None for p in model.head_modules().parameters())
