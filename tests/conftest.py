"""Shared test fixtures: tiny data only, no downloads."""
from __future__ import annotations

import datetime
import io
import os
import queue
import socket
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; set before huggingface_hub is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GDF_SHARED", ROOT.parent / "shared"))
BIRDS = SHARED / "data" / "birds525"
FLOWERS = SHARED / "data" / "flowers102"
LITE0_WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"

needs_shared_weights = pytest.mark.skipif(
    not LITE0_WEIGHTS.is_file(), reason=f"shared ImageNet weights not found at {LITE0_WEIGHTS} (a fresh clone has no ../shared)"
)
needs_flowers = pytest.mark.skipif(
    not FLOWERS.is_dir(), reason=f"shared flower photographs not found at {FLOWERS} (a fresh clone has no ../shared)"
)
needs_birds = pytest.mark.skipif(
    not BIRDS.is_dir(), reason=f"shared bird photographs not found at {BIRDS} (a fresh clone has no ../shared)"
)

# A timm architecture small enough to build and run in milliseconds, without weights.
TINY_BACKBONE = "test_efficientnet"

# Overrides for the smallest real training run on an image folder (see ``folder_root``):
# the tiny backbone at 64 px, a 3-NN graph of 16 channels, batches of 4, on the CPU.
TINY_RUN = [
    "data.dataset=folder", "data.val_fraction=0.25", "data.query_fraction=0.2",
    f"model.backbone.name={TINY_BACKBONE}", "model.backbone.pretrained=false", "model.img_size=64",
    "model.graph.k=3", "model.aggregation.hidden_channels=16", "optim.batch_size=4", "train.device=cpu",
    "eval.topks=[5]",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank: int, world: int, port: int, args: tuple, results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        # As bytes: tensors put on a queue as such live in shared memory that ends with this process.
        buffer = io.BytesIO()
        torch.save(fn(rank, world, *args), buffer)
        results.put((rank, buffer.getvalue()))
    except BaseException as err:  # reported to the test, which fails with it
        results.put((rank, err))
        raise
    finally:
        if dist.is_initialized():  # ``fn`` may have closed it itself
            dist.destroy_process_group()


def run_in_processes(fn, *args, world: int = 2, timeout: float = 120.0) -> list:
    """``fn(rank, world, *args)`` in ``world`` fresh processes joined by a gloo group; returns
    their results by rank. Fails (and kills them) past ``timeout`` seconds, so a hang in a
    collective fails the test instead of stalling the suite. ``fn`` and its results must pickle."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world, port, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    out, deadline = {}, time.monotonic() + timeout
    try:
        while len(out) < world:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{world} processes did not finish within {timeout:.0f} s (a collective hangs?)")
            try:
                rank, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs) and results.empty():
                    raise RuntimeError(f"a worker died: exit codes {[p.exitcode for p in procs]}")
                continue
            if isinstance(value, BaseException):
                raise value
            out[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def write_image(path: Path, seed: int, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "birds"
    for c, name in enumerate(["BLACK SWAN", "BLUE JAY", "ROCK DOVE"]):
        for j in range(5):
            write_image(root / name / f"{j + 1}.jpg", c * 10 + j)
    return root
