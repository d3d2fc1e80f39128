r"""A synthetic fine-grained dataset generated on the fly from a seed (no files).

Every image shows the same kind of object, a large body of one shared colour on a cluttered
background, at a random position, size and orientation. Categories differ **only** in a few
small parts on the body: which colour and shape each part has and where on the body it sits,
the way bird species share a silhouette and differ in the colour of a crown, a wing bar or
a throat patch. Small distractor blobs in the same colours sit on the background, so a
global colour histogram does not separate the categories: the parts' arrangement on the
body does.

An image is a pure function of ``(seed, split, class, instance)``.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SyntheticConfig", "SyntheticFineGrained", "synthetic_class_specs"]

# Part colours (RGB in [0, 1]); the body colour is shared by every class.
PART_COLOURS = (
    (0.90, 0.15, 0.15), (0.15, 0.35, 0.90), (0.95, 0.85, 0.10), (0.10, 0.70, 0.25), (0.95, 0.95, 0.95),
)
BODY_COLOUR = (0.55, 0.42, 0.30)
# Anchor points on the unit body (before rotation/scaling): where parts can sit.
ANCHORS = ((-0.55, -0.25), (-0.55, 0.25), (0.0, -0.45), (0.0, 0.45), (0.55, -0.25), (0.55, 0.25), (0.0, 0.0))
SHAPES = ("disc", "square")


@dataclass
class SyntheticConfig:
    """Size of the synthetic dataset (see :class:`SyntheticFineGrained`)."""

    num_classes: int = 32
    train_per_class: int = 24
    test_per_class: int = 8
    num_parts: int = 3
    seed: int = 0


def synthetic_class_specs(num_classes: int, num_parts: int, seed: int) -> List[Tuple[Tuple[int, int, int], ...]]:
    """Distinct ``(anchor, colour, shape)`` triples per part for each class."""
    layouts = list(itertools.combinations(range(len(ANCHORS)), num_parts))
    looks = list(itertools.product(range(len(PART_COLOURS)), range(len(SHAPES))))
    rng = random.Random(seed)
    specs, seen = [], set()
    limit = len(layouts) * len(looks) ** num_parts
    if num_classes > limit:
        raise ValueError(f"at most {limit} synthetic classes with {num_parts} parts, asked for {num_classes}")
    while len(specs) < num_classes:
        layout = rng.choice(layouts)
        spec = tuple((a, *rng.choice(looks)) for a in layout)
        if spec not in seen:
            seen.add(spec)
            specs.append(spec)
    return specs


class SyntheticFineGrained(Dataset):
    r"""Items ``(image, label, index)``; images :math:`(3, S, S)` in :math:`[0, 1]` (or
    normalised with ``mean``/``std``).

    Args:
        config (SyntheticConfig): sizes and seed.
        img_size (int): side of the square images. (default: :obj:`64`)
        split (str): ``"train"`` or ``"test"`` (disjoint instances of the same classes).
        mean, std: normalisation applied to the rendered image. (default: none)
        augment (bool): random horizontal flip. (default: :obj:`False`)
    """

    def __init__(
        self, config: SyntheticConfig, img_size: int = 64, split: str = "train", mean=None, std=None, augment: bool = False
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if img_size < 16:
            raise ValueError(f"img_size must be >= 16, got {img_size}")
        self.config = config
        self.img_size = img_size
        self.split = split
        self.per_class = config.train_per_class if split == "train" else config.test_per_class
        self.specs = synthetic_class_specs(config.num_classes, config.num_parts, config.seed)
        self.mean = None if mean is None else torch.tensor(mean).view(3, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(3, 1, 1)
        self.augment = augment
        s = img_size
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
        self._grid = (ys, xs)

    @property
    def classes(self) -> List[str]:
        return [f"class_{i:03d}" for i in range(self.config.num_classes)]

    @property
    def labels(self) -> Tensor:
        return torch.arange(self.config.num_classes).repeat_interleave(self.per_class)

    def __len__(self) -> int:
        return self.config.num_classes * self.per_class

    def render(self, label: int, instance: int) -> Tensor:
        """The image of one instance of one class, in :math:`[0, 1]`."""
        split_id = 0 if self.split == "train" else 1
        g = torch.Generator().manual_seed(((self.config.seed * 2 + split_id) * 1_000_003 + label) * 100_003 + instance)
        u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        ys, xs = self._grid
        s = self.img_size
        # Background: smooth random colour field plus noise.
        coarse = torch.nn.functional.interpolate(u(1, 3, 4, 4), size=(s, s), mode="bilinear", align_corners=False)[0]
        img = 0.25 + 0.5 * coarse + 0.05 * torch.randn(3, s, s, generator=g)
        # Distractors: small blobs in part colours anywhere on the background.
        for _ in range(3):
            cy, cx = u(2) * 1.8 - 0.9
            colour = torch.tensor(PART_COLOURS[int(u(1) * len(PART_COLOURS)) % len(PART_COLOURS)])
            mask = ((ys - cy) ** 2 + (xs - cx) ** 2) < 0.07**2
            img[:, mask] = colour.view(3, 1)
        # Body: a rotated ellipse of the shared colour.
        cy, cx = (u(2) - 0.5) * 0.4
        scale = 0.5 + 0.15 * u(1)
        angle = float(u(1) * 2 * math.pi)
        ca, sa = math.cos(angle), math.sin(angle)
        by = ((ys - cy) * ca - (xs - cx) * sa) / (scale * 0.65)
        bx = ((ys - cy) * sa + (xs - cx) * ca) / scale
        body = by**2 + bx**2 <= 1.0
        shade = torch.tensor(BODY_COLOUR).view(3, 1) * (0.85 + 0.3 * u(1))
        img[:, body] = shade
        # Parts at the class's anchors, in the body's frame, jittered.
        radius = 0.13 * scale
        for anchor, colour, shape in self.specs[label]:
            ay, ax = ANCHORS[anchor]
            ay, ax = ay * 0.65 + float(u(1) - 0.5) * 0.1, ax + float(u(1) - 0.5) * 0.1
            py = cy + scale * (ay * ca + ax * sa)
            px = cx + scale * (-ay * sa + ax * ca)
            dy, dx = ys - py, xs - px
            if SHAPES[shape] == "disc":
                mask = dy**2 + dx**2 <= radius**2
            else:
                mask = (dy.abs() <= radius * 0.9) & (dx.abs() <= radius * 0.9)
            tint = torch.tensor(PART_COLOURS[colour]) * (0.9 + 0.2 * float(u(1)))
            img[:, mask] = tint.view(3, 1)
        return img.clamp(0, 1)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        label, instance = divmod(index, self.per_class)
        img = self.render(label, instance)
        if self.augment and torch.rand(1).item() < 0.5:
            img = img.flip(-1)
        if self.mean is not None:
            img = (img - self.mean) / self.std
        return img, label, index
