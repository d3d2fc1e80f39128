"""Data loaders made for the device: worker counts from the cores at hand, workers that persist,
pinned batches for a GPU, and augmentation draws that do not depend on how images are loaded.

Each training image is augmented with its own seed, a function of the run's seed, the epoch and
the image's position (:class:`SeededItems`, fed by :class:`EpochBatches`). The random crops and
flips an image gets are therefore the same whether it is loaded in the main process or in any
number of worker processes, whether those workers persist across epochs or not, in any process
of a multi-process job, and after a resume: the generators of the training process itself are
not touched by data loading.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import Any, Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils.checks import ConfigError

log = logging.getLogger(__name__)

__all__ = ["EpochBatches", "SeededItems", "auto_eval_batch_size", "available_cores", "item_seed", "loader_options",
           "resolve_eval_batch_size", "resolve_num_workers"]

# Most workers "auto" starts per process: beyond this JPEG decoding outpaces one card's training.
MAX_AUTO_WORKERS = 16


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def processes_on_this_machine() -> int:
    """Processes of this job on this machine (``torchrun`` sets ``LOCAL_WORLD_SIZE``)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def resolve_num_workers(setting: Union[int, str], device: Union[str, torch.device]) -> int:
    """``data.num_workers``: a number, or ``"auto"``.

    ``auto`` shares the cores this process may use among the processes of the job on this
    machine. On a GPU the model computes on the card, so all but one core per process load data
    (at most :data:`MAX_AUTO_WORKERS`). On the CPU the model itself needs the cores: with four
    or fewer per process the main process loads the data itself (workers would only take cores
    from the model), with more a quarter of them load.
    """
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
            raise ConfigError(f"data.num_workers: expected a number >= 0 or 'auto', got {setting!r}")
        return setting
    cores = max(1, available_cores() // processes_on_this_machine())
    if torch.device(device).type == "cuda":
        return max(0, min(cores - 1, MAX_AUTO_WORKERS))
    return 0 if cores <= 4 else min(cores // 4, MAX_AUTO_WORKERS)


def resolve_eval_batch_size(setting: Union[int, str], device: Union[str, torch.device], img_size: int) -> int:
    """``eval.batch_size``: a number, or ``"auto"`` (:func:`auto_eval_batch_size`)."""
    return auto_eval_batch_size(device, img_size) if setting == "auto" else int(setting)


def auto_eval_batch_size(device: Union[str, torch.device], img_size: int) -> int:
    """``eval.batch_size: auto``: 8 on a CPU (the fastest on 2 cores, benchmarks/pipeline.py); on a
    GPU 64 images of 448 px, more of smaller ones (the same activation memory), at most 256."""
    if torch.device(device).type != "cuda":
        return 8
    return int(max(32, min(256, 64 * (448 / img_size) ** 2)))


def loader_options(num_workers: int, device: Union[str, torch.device], persistent: bool = True) -> dict:
    """DataLoader options for ``num_workers`` and the device the batches go to: pinned memory for
    a GPU (asynchronous copies), workers that persist and prefetch a few batches each, and a
    generator of the loader's own for the workers' base seed, so that loading never draws from
    the generators that training draws its dropout masks from (however many workers, however
    often they are started)."""
    options: dict = {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda",
                     "generator": torch.Generator()}
    if num_workers > 0:
        options.update(persistent_workers=persistent, prefetch_factor=4)
    return options


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of item ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_629 + index) % (2**63 - 1)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's CPU generators seeded with ``seed``, restored after."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)


class SeededItems(Dataset):
    """``dataset`` whose items are asked for as ``(index, seed)``: each is made with the random
    generators seeded by ``seed`` (and left as they were), so its random draws are a function of
    the pair alone. A plain ``index`` is passed through unseeded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            with _seeded(seed):
                return self.dataset[index]
        return self.dataset[key]


class EpochBatches:
    """A batch sampler whose batches are set before each epoch (:meth:`set_epoch`), so one
    DataLoader, and its worker processes, serve every epoch. Items are ``(index, seed)`` pairs
    for :class:`SeededItems`."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.batches: List[List[Tuple[int, int]]] = []

    def set_epoch(self, epoch: int, batches: Sequence[Sequence[int]]) -> None:
        self.batches = [[(int(i), item_seed(self.seed, epoch, int(i))) for i in rows] for rows in batches]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
