from __future__ import annotations

import json

import pytest
import torch

from gdf_pyg.data import (
    BadImageError,
    DataConfig,
    DatasetLayoutError,
    ImageRecordDataset,
    collate_skipping_bad,
    eval_transform,
    read_cars,
    read_cub,
    read_dogs,
    read_image_folder,
    read_splits,
    write_split,
)

from ..conftest import BIRDS, needs_birds
from .test_transforms import image_config


def test_cub(cub_root):
    s = read_cub(cub_root)
    assert (len(s.train), len(s.test), s.num_classes) == (9, 3, 3)
    assert s.classes[2] == "003.Sooty Albatross"  # spaces survive
    rec = s.train[0]
    assert rec.path == cub_root / "images/001.Black_footed_Albatross/Black_footed_Albatross_0000.jpg"
    assert rec.label == 0 and rec.bbox == (2.0, 3.0, 22.0, 18.0)
    img = ImageRecordDataset(s.train, eval_transform(image_config(16)), use_bbox=True)[0][0]
    assert img.shape == (3, 16, 16)


def test_cub_errors(cub_root):
    (cub_root / "train_test_split.txt").write_text("1 1\n")
    with pytest.raises(DatasetLayoutError, match="train_test_split.txt' has no line for image id 2"):
        read_cub(cub_root)
    (cub_root / "classes.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing file .*classes.txt.*expected the layout CUB_200_2011"):
        read_cub(cub_root)
    (cub_root / "images.txt").write_text("1\n")
    with pytest.raises(DatasetLayoutError, match="images.txt' line 1: expected 2 fields"):
        read_cub(cub_root)


def test_dogs(dogs_root):
    s = read_dogs(dogs_root)
    assert (len(s.train), len(s.test)) == (6, 2)
    assert s.classes == ["Chihuahua", "Japanese_spaniel"]
    assert s.train[3].path == dogs_root / "Images/n02085782-Japanese_spaniel/n02085782_0.jpg"
    assert [r.label for r in s.test] == [0, 1]
    (dogs_root / "test_list.mat").unlink()
    with pytest.raises(DatasetLayoutError, match="test_list.mat"):
        read_dogs(dogs_root)


def test_cars_devkit(cars_devkit_root):
    s = read_cars(cars_devkit_root)
    assert (len(s.train), len(s.test), s.num_classes) == (6, 6, 3)
    assert s.classes[1] == "Acura RL Sedan 2012"
    assert s.train[0].path == cars_devkit_root / "cars_train/00001.jpg"
    assert s.train[0].bbox == (1.0, 2.0, 30.0, 25.0) and s.train[1].label == 1
    (cars_devkit_root / "cars_test_annos_withlabels.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetLayoutError, match="cannot read MATLAB file"):
        read_cars(cars_devkit_root)


def test_cars_single_file(cars_single_root):
    s = read_cars(cars_single_root)
    assert (len(s.train), len(s.test)) == (6, 2)
    assert s.classes == ["Car A", "Car B"]
    assert s.test[0].path == cars_single_root / "car_ims/000007.jpg"


def test_image_folder_split_is_seeded_stratified_and_saved(folder_root, tmp_path):
    a = read_image_folder(folder_root, query_fraction=0.2, seed=3)
    b = read_image_folder(folder_root, query_fraction=0.2, seed=3)
    assert [r.path for r in a.test] == [r.path for r in b.test]
    assert len(a.test) == 3 and sorted(r.label for r in a.test) == [0, 1, 2]
    assert a.classes == ["BLACK SWAN", "BLUE JAY", "ROCK DOVE"]
    a.carve_validation(0.25, 0)
    split = tmp_path / "split.json"
    write_split(a, folder_root, split)
    saved = json.loads(split.read_text())
    assert saved["rule"] == {"rule": "stratified", "query_fraction": 0.2, "seed": 3}
    assert len(saved["validation"]) == 3 and len(saved["database"]) == 12
    again = read_image_folder(folder_root, query_fraction=0.5, seed=99, split_file=split)
    assert [r.path for r in again.test] == [r.path for r in a.test]


def test_read_splits_carves_validation(folder_root):
    s = read_splits(DataConfig(dataset="folder", root=str(folder_root), val_fraction=0.25))
    assert len(s.val) == 3 and len(s.train_minus_val) == 9 and len(s.train) == 12
    assert not set(s.val) & set(s.test)


def test_folder_errors(tmp_path):
    (tmp_path / "empty class").mkdir()
    with pytest.raises(DatasetLayoutError, match="empty class' holds no images"):
        read_image_folder(tmp_path)
    with pytest.raises(DatasetLayoutError, match="missing folder"):
        read_image_folder(tmp_path / "nope")


def test_bad_images_stop_or_skip(folder_root):
    bad = folder_root / "BLUE JAY" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    s = read_image_folder(folder_root)
    records = [r for r in s.train + s.test if r.path.parent.name == "BLUE JAY"]
    tf = eval_transform(image_config(16))
    strict = ImageRecordDataset(records, tf)
    with pytest.raises(BadImageError, match=r"BLUE JAY/3.jpg.*skip_bad_images=true"):
        [strict[i] for i in range(len(records))]
    lenient = ImageRecordDataset(records, tf, skip_bad=True)
    images, labels, indices, bad_idx = collate_skipping_bad([lenient[i] for i in range(len(records))])
    assert images.shape[0] == len(records) - 1
    assert [records[i].path for i in bad_idx] == [bad]


@needs_birds
def test_shared_birds_folder():
    s = read_image_folder(BIRDS, query_fraction=0.2, seed=0)
    assert s.num_classes == 525 and len(s.train) == 2100 and len(s.test) == 525
    assert "PLUSH CRESTED JAY" in s.classes
    ds = ImageRecordDataset(s.test[:4], eval_transform(image_config(32)))
    assert torch.stack([ds[i][0] for i in range(4)]).shape == (4, 3, 32, 32)


def test_max_classes_keeps_the_first_classes(folder_root):
    s = read_splits(DataConfig(dataset="folder", root=str(folder_root), val_fraction=0.25, max_classes=2))
    assert s.classes == ["BLACK SWAN", "BLUE JAY"]
    assert {r.label for r in s.train + s.test + s.val} == {0, 1} and len(s.train) == 8
