"""Checkpoints as plain data: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only: the configuration
as a dict, state dicts, optimizer and scheduler states, RNG states, the epoch, metrics and a
format version. Nothing in it is code, so loading it runs nothing; a file that carries a
pickled object (code) is refused by the safe unpickler with :class:`UnsafeCheckpointError`.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "UnsafeCheckpointError",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "seed_everything",
    "state_dict_cpu",
    "save_checkpoint",
]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or is not a gdf-pyg checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickled objects beyond plain data; it was not loaded."""


def state_dict_cpu(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of ``module``'s state dict on the CPU, detached: plain data for a checkpoint."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# Our own: torch.save writes in place, so a kill mid-write would leave a truncated file.
def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Writes ``state`` to ``path`` atomically: a temporary file in the same folder, flushed
    to disk, then renamed over ``path``. A crash mid-write leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "format_version": FORMAT_VERSION}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Reads a checkpoint with ``weights_only=True`` and checks its format version.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeCheckpointError: the file holds pickled code or objects other than plain data.
        CheckpointError: the file is not a gdf-pyg checkpoint or has another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: it holds pickled objects that are not plain data "
            f"(tensors, numbers, strings, lists, dicts), which could run code. Details: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err}") from err
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{str(path)!r} is not a gdf-pyg checkpoint (no format_version)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format {state['format_version']}, this gdf-pyg reads {FORMAT_VERSION}"
        )
    return state


def seed_everything(seed: int) -> None:
    """Seeds every generator a run draws from: torch (initialisation, augmentation), NumPy,
    and Python's (timm's random crops)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng() -> Dict[str, Any]:
    """The states of Python's, NumPy's and torch's generators, as plain data."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Restores the generators from :func:`capture_rng`'s data."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = state["numpy"]
    np.random.set_state((npv[0], npv[1].numpy().astype(np.uint32), npv[2], npv[3], npv[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
