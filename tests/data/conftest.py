"""Small generated copies of each official dataset layout (real file formats, tiny images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from ..conftest import write_image


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    root = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty Albatross"]
    images, labels, split, boxes = [], [], [], []
    i = 0
    for c, name in enumerate(classes, start=1):
        for j in range(4):
            i += 1
            rel = f"{name}/{name.split('.')[1]}_{j:04d}.jpg"
            write_image(root / "images" / rel, i)
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
            split.append(f"{i} {1 if j < 3 else 0}")
            boxes.append(f"{i} 2.0 3.0 20.0 15.0")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{c} {n}" for c, n in enumerate(classes, start=1)) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    return root


def _cell(strings):
    arr = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        arr[i, 0] = np.array([s])
    return arr


@pytest.fixture
def dogs_root(tmp_path: Path) -> Path:
    root = tmp_path / "StanfordDogs"
    breeds = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    lists = {"train": ([], []), "test": ([], [])}
    k = 0
    for b, breed in enumerate(breeds, start=1):
        for j in range(4):
            k += 1
            rel = f"{breed}/{breed.split('-')[0]}_{j}.jpg"
            write_image(root / "Images" / rel, k)
            files, labels = lists["train" if j < 3 else "test"]
            files.append(rel)
            labels.append(b)
    for split, (files, labels) in lists.items():
        savemat(root / f"{split}_list.mat", {
            "file_list": _cell(files),
            "annotation_list": _cell([f.rsplit(".", 1)[0] for f in files]),
            "labels": np.array(labels, dtype=np.float64).reshape(-1, 1),
        })
    return root


def _annotations(rows, fields):
    dtype = [(f, "O") for f in fields]
    arr = np.zeros((1, len(rows)), dtype=dtype)
    for i, row in enumerate(rows):
        for f in fields:
            v = row[f]
            arr[0, i][f] = np.array([v]) if isinstance(v, str) else np.array([[v]], dtype=np.uint16 if f != "test" else np.uint8)
    return arr


@pytest.fixture
def cars_devkit_root(tmp_path: Path) -> Path:
    root = tmp_path / "StanfordCars"
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    for split in ("train", "test"):
        rows = []
        for j in range(6):
            fname = f"{j + 1:05d}.jpg"
            write_image(root / f"cars_{split}" / fname, j + (0 if split == "train" else 100))
            rows.append({"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 30, "bbox_y2": 25, "class": j % 3 + 1, "fname": fname})
        target = root / "devkit" / "cars_train_annos.mat" if split == "train" else root / "cars_test_annos_withlabels.mat"
        target.parent.mkdir(parents=True, exist_ok=True)
        savemat(target, {"annotations": _annotations(rows, fields)})
    names = np.empty((1, 3), dtype=object)
    for i, n in enumerate(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]):
        names[0, i] = np.array([n])
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    return root


@pytest.fixture
def cars_single_root(tmp_path: Path) -> Path:
    root = tmp_path / "StanfordCarsAll"
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    for j in range(8):
        rel = f"car_ims/{j + 1:06d}.jpg"
        write_image(root / rel, j)
        rows.append({"relative_im_path": rel, "bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 30, "bbox_y2": 25,
                     "class": j % 2 + 1, "test": int(j >= 6)})
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = np.array(["Car A"]), np.array(["Car B"])
    savemat(root / "cars_annos.mat", {"annotations": _annotations(rows, fields), "class_names": names})
    return root
