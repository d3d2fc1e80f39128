"""Shared test fixtures: tiny data only, no downloads."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; set before huggingface_hub is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GDF_SHARED", ROOT.parent / "shared"))
BIRDS = SHARED / "data" / "birds525"
LITE0_WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"

needs_shared_weights = pytest.mark.skipif(
    not LITE0_WEIGHTS.is_file(), reason=f"shared ImageNet weights not found at {LITE0_WEIGHTS} (a fresh clone has no ../shared)"
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
