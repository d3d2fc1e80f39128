from __future__ import annotations

import pytest
import torch
from torch import nn

from gdf_pyg.training.config import ConfigError, TrainConfig
from gdf_pyg.training.ema import WeightAverage
from gdf_pyg.engine.encoding import EncodedSet

from .test_shared import _trainer, stop_in_epoch


def test_average_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)  # a weight that does not train
    average = WeightAverage(model, decay=0.9)
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    assert repr(average) == "WeightAverage(decay=0.9, updates=0)"
    assert [average.decay_at(t) for t in (1, 2, 100)] == [2 / 11, 3 / 12, 0.9]

    steps = []
    for t in (1, 2):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[0].bias.add_(1.0)
        model.train()(torch.randn(5, 3))  # moves the batch-norm statistics and the batch count
        steps.append((model[0].weight.detach().clone(), model[1].running_mean.clone()))
        average.update()
    beta1, beta2 = 2 / 11, 3 / 12
    expected_w = beta2 * (beta1 * w0 + (1 - beta1) * steps[0][0]) + (1 - beta2) * steps[1][0]
    expected_mean = beta2 * (beta1 * torch.zeros(2) + (1 - beta1) * steps[0][1]) + (1 - beta2) * steps[1][1]
    torch.testing.assert_close(average.module[0].weight, expected_w)
    torch.testing.assert_close(average.module[1].running_mean, expected_mean)
    assert torch.equal(average.module[0].bias, b0)  # not trained: left alone
    assert int(average.module[1].num_batches_tracked) == 2  # integers are copied
    assert not any(p.requires_grad for p in average.module.parameters())

    again = WeightAverage(model, decay=0.9)
    again.load_state_dict(average.state_dict())
    assert again.updates == 2 and torch.equal(again.module[0].weight, average.module[0].weight)
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(model, decay=1.0)


def test_ema_decay_is_checked(folder_root):
    from ..conftest import TINY_RUN

    with pytest.raises(ConfigError, match=r"optim.ema_decay: must be in \[0, 1\)"):
        TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, "optim.ema_decay=1.5"])


def test_selection_uses_the_average_and_resumes_exactly(tmp_path, folder_root):
    whole = _trainer(folder_root, tmp_path / "a", "optim.ema_decay=0.5")
    whole.fit()
    assert whole.average.updates == whole.step > 0
    averaged = whole.average.module.state_dict()
    trained = whole.model.state_dict()
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained)
    chosen = dict(whole.best_epoch)
    # Selection validates and keeps the average's weights, not the trained ones.
    whole.best_metric = {b: -1.0 for b in whole.all_bits}
    stats = {}
    whole._select(stats, evaluate=True)
    codes = whole.codes("train", model=whole.average.module, selection=True)
    for bits, values in whole.model.split(codes.values).items():
        assert all(torch.equal(whole.best_state[bits][k], averaged[k]) for k in averaged)
        assert stats[f"val_map@{bits}"] == whole.validation_map(EncodedSet(values, codes.positions, codes.batches))
        assert stats[f"val_map@{bits}"] == whole.history[-1][f"val_map@{bits}"]  # what the last epoch reported

    stop_in_epoch(_trainer(folder_root, tmp_path / "b", "optim.ema_decay=0.5"), 3)
    resumed = _trainer(folder_root, tmp_path / "b", "optim.ema_decay=0.5")
    resumed.resume(tmp_path / "b" / "last.pt")
    resumed.fit()
    assert resumed.average.updates == whole.average.updates and resumed.best_epoch == chosen
    for key, value in averaged.items():
        assert torch.equal(resumed.average.module.state_dict()[key], value), key

    plain = _trainer(folder_root, tmp_path / "c")
    with pytest.raises(ConfigError, match="has no moving average of the weights"):
        _trainer(folder_root, tmp_path / "d", "optim.ema_decay=0.5").resume(_save_last(plain, tmp_path / "c"))


def _save_last(trainer, out):
    from gdf_pyg.engine.checkpoint import save_checkpoint

    save_checkpoint(trainer.checkpoint(), out / "last.pt")
    return out / "last.pt"
