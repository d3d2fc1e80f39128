"""Multi-process training on 2 real CPU processes (gloo) against one process on the same global
batch: gradients with a fine-tuned backbone, sharded encoding, and a whole torchrun run with an
unreadable image. Every test has a time limit, so a hang in a collective fails."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdf_pyg.training.config import TrainConfig
from gdf_pyg.engine.distributed import DistContext, close_distributed, init_distributed
from gdf_pyg.engine.encoding import encode_dataset
from gdf_pyg.training.run_data import build_run_data
from gdf_pyg.training.trainer import Trainer

from ..conftest import ROOT, TINY_RUN, free_port, run_in_processes

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
FINE_TUNED = [*TINY_RUN, "train.bits=[12]", "train.frozen_backbone=false", "train.freeze_backbone_bn=false",
              "loss.pairwise=0.5", "data.val_fraction=0.0"]


def _trainer(root: Path, ctx=None) -> Trainer:
    torch.set_num_threads(1)
    cfg = TrainConfig.load(overrides=[f"data.root={root}", *FINE_TUNED])
    from gdf_pyg.models.gdfnet import GDFNet
    from gdf_pyg.training.trainer import model_config_for

    probe = GDFNet(model_config_for(cfg, 12, 2))
    data = build_run_data(cfg, probe.image_config)
    return Trainer.from_config(cfg, 12, data, root.parent / "out", torch.device("cpu"), ctx=ctx)


def _global_batch(trainer: Trainer, n: int):
    items = [trainer.data.train_eval[i] for i in range(n)]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])


def _grads(rank, world, root, rows):
    trainer = _trainer(Path(root), DistContext(rank, world))
    images, labels = _global_batch(trainer, sum(rows))
    start = sum(rows[:rank])
    trainer._set_train_mode()
    terms = trainer.backward(images[start:start + rows[rank]], labels[start:start + rows[rank]])
    return {k: float(v.detach()) for k, v in terms.items()}, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("rows", [(2, 2), (3, 2)])
def test_two_processes_compute_the_gradients_of_one_process(folder_root, rows):
    single = _trainer(folder_root)
    images, labels = _global_batch(single, sum(rows))
    single._set_train_mode()
    terms = single.backward(images, labels)
    ref = {n: p.grad for n, p in single.model.named_parameters()}
    assert any(n.startswith("backbone.") for n in ref)  # the backbone is fine-tuned
    for loss, grads in run_in_processes(_grads, str(folder_root), rows, timeout=180):
        for k, v in terms.items():
            assert loss[k] == pytest.approx(float(v), rel=1e-5), k
        assert grads.keys() == ref.keys()
        # Equal up to float32 summation order (batch statistics reduced in another order). Gradients
        # that are zero in exact arithmetic (a bias followed by batch norm) are rounding noise:
        # they are compared against a thousandth of the whole gradient instead of themselves.
        floor = 1e-3 * float(torch.sqrt(sum(g.norm() ** 2 for g in ref.values())))
        errors = {name: float((grads[name] - g).norm()) / max(float(g.norm()), floor) for name, g in ref.items()}
        assert max(errors.values()) < 1e-4, max(errors.items(), key=lambda kv: kv[1])


class _Counting:
    """Doubles images and counts the batches it sees."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x.flatten(1)[:, :3] * 2


def _encode(rank, world, root):
    trainer = _trainer(Path(root))
    fn = _Counting()
    out = encode_dataset(fn, trainer.data.train_eval, 3, torch.device("cpu"), ctx=DistContext(rank, world))
    return out.values, out.positions, out.batches, fn.calls


def test_encoding_is_shared_among_processes_and_gathered(folder_root):
    ref = encode_dataset(_Counting(), _trainer(folder_root).data.train_eval, 3, torch.device("cpu"))
    parts = run_in_processes(_encode, str(folder_root), timeout=120)
    assert sum(p[3] for p in parts) == 4 and all(p[3] == 2 for p in parts)  # 12 images, batches of 3
    for values, positions, batches, _ in parts:
        assert torch.equal(values, ref.values) and torch.equal(positions, ref.positions)
        assert torch.equal(batches, ref.batches)


def test_torchrun_fine_tunes_with_an_unreadable_image(tmp_path, folder_root):
    bad = folder_root / "BLUE JAY" / "3.jpg"
    bad.write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gdf_pyg.cli",
           "train", "--out", str(run), "--no-progress", f"data.root={folder_root}", *TINY_RUN, "optim.epochs=2",
           "train.bits=[12]", "train.frozen_backbone=false", "data.skip_bad_images=true", "optim.batch_size=5"]
    env = {**ENV, "MASTER_PORT": str(free_port())}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["processes"] == 2
    assert summary["skipped_images"] == [str(bad)]
    result = summary["results"]["12"]
    assert result["database"] + result["queries"] == 14  # every readable photo, the bad one left out
    # The mAP is the model's: gdf-pyg eval of the saved checkpoint, in one process, computes it again.
    from gdf_pyg.cli import main

    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval"), "--no-progress",
                 "--skip-bad-images"]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]["12"]
    for key in ("map", "map_db_order"):
        assert again["metrics"][key] == result["metrics"][key], key
    assert again["database"] == result["database"] and again["queries"] == result["queries"]


def _group_ownership(rank: int, world: int, port: int) -> tuple:
    import torch.distributed as dist

    theirs = init_distributed(torch.device("cpu"))  # the caller's group (run_in_processes made it)
    close_distributed(theirs)
    kept = dist.is_initialized()
    dist.destroy_process_group()
    os.environ["MASTER_PORT"] = str(port)
    ours = init_distributed(torch.device("cpu"))
    dist.barrier()
    close_distributed(ours)
    return theirs.owns_group, kept, ours.owns_group, ours.world_size, dist.is_initialized()


def test_a_process_group_is_destroyed_by_whoever_created_it():
    """A group left to the interpreter's exit can abort a finished torchrun run (gloo threads
    still running at teardown): train() destroys the group it created, and only that one."""
    for result in run_in_processes(_group_ownership, free_port(), timeout=120):
        assert result == (False, True, True, 2, False)


def _unreached_classifier(rank, world, root):
    torch.set_num_threads(1)
    cfg = TrainConfig.load(overrides=[f"data.root={root}", *FINE_TUNED, "optim.epochs=1", "loss.classification=0",
                                      "optim.batch_size=4"])
    from gdf_pyg.nn.backbone import image_config_of

    data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size))
    trainer = Trainer.from_config(cfg, 12, data, Path(root).parent / f"out{rank}", torch.device("cpu"),
                                  ctx=DistContext(rank, world))
    before = trainer.model.head.classifier.weight.clone()
    stats = trainer.train_epoch()
    return trainer.batches.steps_per_epoch, stats["loss"], torch.equal(before, trainer.model.head.classifier.weight)


def test_two_processes_train_with_a_loss_term_switched_off(folder_root):
    # With loss.classification=0 nothing reaches the code classifier: it is frozen, so DDP does not
    # wait in every step for a gradient that never comes ("Expected to have finished reduction...").
    for steps, loss, unchanged in run_in_processes(_unreached_classifier, str(folder_root), timeout=180):
        assert steps == 3 and loss > 0 and unchanged


def _draws_and_resume(rank, world, root):
    """Each process's own draws, and an interrupted 2-process run resumed against an uninterrupted one."""
    torch.set_num_threads(1)
    from gdf_pyg.engine.checkpoint import load_checkpoint, save_checkpoint
    from gdf_pyg.nn.backbone import image_config_of

    ctx = DistContext(rank, world)
    cfg = TrainConfig.load(overrides=[f"data.root={root}", *FINE_TUNED, "optim.epochs=2", "optim.batch_size=4",
                                      "model.hash_dropout=0.5", "model.aggregation.dropout=0.3"])
    data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size))
    out = Path(root).parent / "runs"

    def trainer():
        return Trainer.from_config(cfg, 12, data, out, torch.device("cpu"), ctx=ctx)

    probe = trainer()
    draws = torch.rand(4)  # what dropout would draw next
    mine = ctx.shard(cfg.optim.batch_size)
    probe.batches._epoch_batches.set_epoch(0, [rows[mine].tolist() for rows, _, _ in probe.batches.shards()])
    seeds = [seed for batch in probe.batches._epoch_batches for _, seed in batch]
    whole = trainer()
    whole.fit()
    first = trainer()
    first.train_epoch()
    first.epoch = 1
    generators = first.process_generators()
    path = out / "first.pt"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(first.checkpoint(generators), path)
    torch.distributed.barrier()
    resumed = trainer()
    resumed.resume(path if ctx.is_main else out / "not-on-this-machine.pt")  # only the main process reads the file
    resumed.fit()
    same = all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()))
    return draws, seeds, same, len(load_checkpoint(path)["rng_by_process"]) if ctx.is_main else None


def test_each_process_draws_its_own_and_two_processes_resume_exactly(folder_root):
    (draws0, seeds0, same0, saved), (draws1, seeds1, same1, _) = run_in_processes(_draws_and_resume, str(folder_root),
                                                                                timeout=240)
    assert not torch.equal(draws0, draws1)  # dropout masks differ between the processes' shards
    assert seeds0 and seeds1 and not set(seeds0) & set(seeds1)  # and so do the images' augmentation seeds
    assert saved == 2  # every process's generators are saved ...
    assert same0 and same1  # ... and restored: the resumed run ends with the uninterrupted run's weights


def _cache_not_shared(rank, world, root):
    """The feature cache on the main process's disk only: the processes compute it together."""
    torch.set_num_threads(1)
    from gdf_pyg.nn.backbone import FeatureBackbone, image_config_of
    from gdf_pyg.training.run import cached_features

    cfg = TrainConfig.load(overrides=[f"data.root={root}", *TINY_RUN, "train.frozen_backbone=true"])
    data = build_run_data(cfg, image_config_of(cfg.model.backbone.name, cfg.model.img_size))
    torch.manual_seed(0)
    backbone = FeatureBackbone(cfg.model.backbone.name, pretrained=False)
    ctx = DistContext(rank, world)
    cache = Path(root).parent / ("cache" if rank == 0 else f"cache-{rank}")  # another disk for the others
    first = cached_features(cfg, data, backbone, torch.device("cpu"), cache, ctx=ctx)
    again = cached_features(cfg, data, backbone, torch.device("cpu"), cache, ctx=ctx)
    return first["train"].values, again["train"].values, sorted(p.name for p in cache.glob("*.pt"))


def test_processes_without_a_shared_disk_decide_alike(folder_root):
    (a0, b0, files0), (a1, b1, files1) = run_in_processes(_cache_not_shared, str(folder_root), timeout=180)
    assert torch.equal(a0, a1) and torch.equal(b0, b1) and torch.equal(a0, b0)
    assert len(files0) == 1 and files1 == []  # written by the main process alone; nobody waited for nobody
