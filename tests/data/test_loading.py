from __future__ import annotations

import random

import pytest
import torch

import gdf_pyg.data.loading as loading
from gdf_pyg.data.loading import (
    EpochBatches,
    SeededItems,
    auto_eval_batch_size,
    item_seed,
    loader_options,
    resolve_eval_batch_size,
    resolve_num_workers,
)
from gdf_pyg.utils.checks import ConfigError


@pytest.mark.parametrize("cores, processes, device, expected", [
    (16, 1, "cuda", 15), (16, 4, "cuda", 3), (64, 1, "cuda", 16), (1, 1, "cuda", 0),
    (2, 1, "cpu", 0), (4, 1, "cpu", 0), (16, 1, "cpu", 4), (16, 2, "cpu", 2),
])
def test_auto_workers_share_the_cores_this_process_may_use(monkeypatch, cores, processes, device, expected):
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert loading.available_cores() == cores
    assert resolve_num_workers("auto", device) == expected
    assert resolve_num_workers(3, device) == 3  # a number is taken as it is


def test_worker_setting_errors():
    for bad in (-1, "many", True):
        with pytest.raises(ConfigError, match="data.num_workers: expected a number >= 0 or 'auto'"):
            resolve_num_workers(bad, "cpu")


def test_eval_batch_size_for_the_device():
    assert auto_eval_batch_size("cpu", 448) == 8 and auto_eval_batch_size("cpu", 224) == 8
    assert auto_eval_batch_size("cuda", 448) == 64
    assert auto_eval_batch_size("cuda", 224) == 256 and auto_eval_batch_size("cuda", 896) == 32
    assert resolve_eval_batch_size(12, "cuda", 448) == 12 and resolve_eval_batch_size("auto", "cpu", 64) == 8


def test_loader_options_pin_and_keep_workers_for_a_gpu():
    options = loader_options(0, "cpu")
    assert isinstance(options.pop("generator"), torch.Generator)  # never the global one
    assert options == {"num_workers": 0, "pin_memory": False}
    options = loader_options(4, "cuda")
    options.pop("generator")
    assert options == {"num_workers": 4, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4}
    assert loader_options(2, "cpu", persistent=False)["persistent_workers"] is False


class _Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.rand(2), random.random(), i


def test_seeded_items_draw_from_their_seed_alone_and_leave_the_generators_alone():
    items = SeededItems(_Draws())
    torch.manual_seed(5)
    random.seed(5)
    a, b = items[(3, 11)], items[(3, 11)]
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == 3
    assert not torch.equal(items[(3, 12)][0], a[0])  # another seed, other draws
    after = torch.rand(1), random.random()
    torch.manual_seed(5)
    random.seed(5)
    assert torch.equal(after[0], torch.rand(1)) and after[1] == random.random()
    assert items[4][2] == 4  # a plain index passes through


def test_epoch_batches_carry_seeds_of_run_epoch_and_item():
    batches = EpochBatches(seed=7)
    batches.set_epoch(2, [[4, 1], [0]])
    assert list(batches) == [[(4, item_seed(7, 2, 4)), (1, item_seed(7, 2, 1))], [(0, item_seed(7, 2, 0))]]
    assert len(batches) == 2
    seeds = {item_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 3 * 3 * 50  # distinct for every run, epoch and item


def test_the_same_draws_in_the_main_process_and_in_workers():
    batches = EpochBatches(seed=0)
    batches.set_epoch(1, [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]])
    got = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(SeededItems(_Draws()), batch_sampler=batches, num_workers=workers)
        got.append([batch[0] for batch in loader])
    assert all(torch.equal(a, b) for a, b in zip(*got))
