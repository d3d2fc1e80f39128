"""Interruption and resume, divergence, and multi-process training, through real processes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from gdf_pyg.engine.checkpoint import load_checkpoint
from gdf_pyg.training.config import TrainConfig
from gdf_pyg.training import TrainingDivergedError, train

from ..conftest import ROOT, TINY_RUN


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> list:
    return [sys.executable, "-m", "gdf_pyg.cli", *args]


def weights(run, bits):
    return load_checkpoint(run / f"bits{bits}" / "best.pt")["model"]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, folder_root):
    args = ["--no-progress", f"data.root={folder_root}", "optim.epochs=5", "train.bits=[12,16]", *TINY_RUN]
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(cli("train", "--out", str(ref), *args), env=ENV, check=True, capture_output=True)

    proc = subprocess.Popen(cli("train", "--out", str(run), *args), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "bits12" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill, mid-training
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists(), "the run finished before it could be interrupted"
    killed_at = load_checkpoint(run / "bits12" / "last.pt")["epoch"]
    assert 1 <= killed_at < 5

    subprocess.run(cli("train", "--resume", str(run), "--no-progress"), env=ENV, check=True, capture_output=True)
    for bits in (12, 16):
        a, b = weights(ref, bits), weights(run, bits)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (bits, key)
    ref_metrics = json.loads((ref / "metrics.json").read_text())["results"]
    run_metrics = json.loads((run / "metrics.json").read_text())["results"]
    for bits in ("12", "16"):
        assert run_metrics[bits]["metrics"] == ref_metrics[bits]["metrics"]
        assert run_metrics[bits]["best_epoch"] == ref_metrics[bits]["best_epoch"]


def test_resume_refuses_new_settings(tmp_path):
    from gdf_pyg.cli import main

    assert main(["train", "--resume", str(tmp_path), "optim.epochs=3"]) == 2


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, folder_root, monkeypatch):
    from gdf_pyg.nn import losses

    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", "optim.epochs=3", "train.bits=[12]",
                                      "train.frozen_backbone=true", *TINY_RUN])
    calls = {"n": 0}
    original = losses.GDFLoss.forward

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        out = original(self, *args, **kwargs)
        if calls["n"] == 3:  # the first step of epoch 2 (2 steps per epoch)
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(losses.GDFLoss, "forward", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"12 bits: loss is nan at epoch 2, step 3 \(and the weights are no longer finite\); the last good checkpoint"):
        train(cfg, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "bits12" / "last.pt")["epoch"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path, folder_root):
    """DDP with gloo on CPU: 2 processes x 4 images = the single process's global batch of 8,
    fine-tuned on augmented images (each image augmented from its own seed, whatever the process)
    and validated every epoch (the codes shared among the processes).

    Tolerance: the per-epoch mean losses agree to a relative 1e-4 (float32 gradients summed in
    another order); batch statistics and batch-level losses cover the global batch in both. Without
    dropout: each process draws its own masks (as it must), so no run of 2 processes can draw the
    single process's. The weights of the two runs differ by that rounding, enough to flip a bit of
    a code near 0 on 3 validation photos; so the 2-process validation is checked against one
    process validating the same weights.
    """
    args = ["--no-progress", f"data.root={folder_root}", "optim.epochs=3", "train.bits=[12]",
            "train.frozen_backbone=false", "model.graph.method=knn", *TINY_RUN, "optim.batch_size=8",
            "data.val_fraction=0.25", "loss.pairwise=0.5"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run(cli("train", "--out", str(single), *args), env=ENV, check=True, capture_output=True, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                f"--master_port={_free_port()}", "-m", "gdf_pyg.cli"]
    res = subprocess.run([*torchrun, "train", "--out", str(multi), *args], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    one = load_checkpoint(single / "bits12" / "last.pt")["history"]
    two = load_checkpoint(multi / "bits12" / "last.pt")["history"]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for term in ("loss", "classification", "quantization", "balance", "pairwise"):
            assert b[term] == pytest.approx(a[term], rel=1e-4), term
        assert b["images"] == a["images"]
        assert "val_map" in a and "val_map" in b
    # The validation shared between the 2 processes is the one a single process computes.
    from gdf_pyg.engine.inference import load_model
    from gdf_pyg.training.run_data import build_run_data, run_evaluator

    model, state = load_model(multi / "bits12" / "last.pt")
    cfg = TrainConfig.from_dict(state["config"])
    data = build_run_data(cfg, model.image_config, multi)
    evaluator = run_evaluator(data, torch.device("cpu"), cfg.eval.batch_size)
    assert evaluator.validation_map(model, data.val_pos, data.fit_pos) == two[-1]["val_map"]
    assert json.loads((multi / "metrics.json").read_text())["processes"] == 2
    assert not list(multi.glob("bits12/*.tmp"))
