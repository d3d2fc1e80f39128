"""Checkpoints: plain data, atomic writes, refusal of pickled code."""
from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from gdf_pyg.engine.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    UnsafeCheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def test_round_trip_plain_data(tmp_path):
    state = {"model": {"w": torch.randn(3, 2)}, "epoch": 4, "history": [{"loss": 1.5}], "name": "x"}
    path = save_checkpoint(state, tmp_path / "a.pt")
    back = load_checkpoint(path)
    assert back["format_version"] == FORMAT_VERSION and back["epoch"] == 4 and back["name"] == "x"
    assert torch.equal(back["model"]["w"], state["model"]["w"])


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "model": {}, "payload": _RunsCode(marker)}, path)
    # Unpickled unsafely, the payload would run (checked on a copy of the bytes, never the file).
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_other_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a gdf-pyg checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}"):
        load_checkpoint(tmp_path / "future.pt")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_rng_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng()
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
