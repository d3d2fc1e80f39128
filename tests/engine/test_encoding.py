"""One encoding path: codes from cached backbone features are those of encoding the images."""
from __future__ import annotations

import torch

from gdf_pyg.data import SyntheticConfig, SyntheticFineGrained
from gdf_pyg.models.gdfnet import GDFNet, GDFNetConfig
from gdf_pyg.engine.encoding import encode_cached, encode_dataset

from ..conftest import TINY_BACKBONE


def test_cached_features_replay_the_encoding_of_images_exactly():
    model = GDFNet(GDFNetConfig.from_dict({"backbone": {"name": TINY_BACKBONE, "pretrained": False}, "img_size": 64,
                                           "graph": {"k": 3}, "aggregation": {"hidden_channels": 16}})).eval()
    data = SyntheticFineGrained(SyntheticConfig(num_classes=3, train_per_class=7), 64, "train", model.mean, model.std)
    cpu = torch.device("cpu")
    direct = encode_dataset(lambda x: model(x).codes, data, 4, cpu)
    cache = encode_dataset(model.forward_features, data, 4, cpu)
    replayed = encode_cached(lambda f: model.forward_head(f).codes, cache, cpu)
    assert cache.values.dtype == torch.float32 and torch.equal(cache.batches, torch.arange(21) // 4)
    # Bit for bit, relaxed codes included: the same batches, the same precision.
    assert torch.equal(replayed.values, direct.values) and torch.equal(replayed.positions, direct.positions)
    half = encode_cached(lambda f: model.forward_head(f.half().float()).codes, cache, cpu)
    assert not torch.equal(half.values, direct.values)  # a float16 cache would not be exact
