from __future__ import annotations

import logging

import pytest
import torch

from gdf_pyg.engine.inference import model_device, resolve_device
from gdf_pyg.utils.checks import ConfigError


def test_a_model_runs_where_it_trained_by_default(monkeypatch, caplog):
    assert model_device("auto", {"device": "cpu"}) == torch.device("cpu")
    assert model_device("auto", {}) == torch.device("cpu")  # checkpoints before 0.8 trained where eval ran
    assert model_device("cpu", {"device": "cuda"}) == torch.device("cpu")  # asked for: taken as asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert model_device("auto", {"device": "cuda"}) == torch.device("cpu")
    assert "trained on a GPU and no GPU is available" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert model_device("auto", {"device": "cuda"}) == torch.device("cuda")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device: 'cuda' requested but CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")
