"""gdf-pyg export: a trained model as a self-contained folder that loads without the run."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from gdf_pyg import GDFNet
from gdf_pyg.cli import main
from gdf_pyg.engine.inference import load_model
from gdf_pyg.models.hub import PretrainedFormatError

from ..conftest import TINY_RUN


@pytest.fixture
def run(tmp_path, folder_root):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", f"data.root={folder_root}", "train.bits=[12,16]",
                 "train.frozen_backbone=false", *TINY_RUN, "optim.epochs=2", "model.hash_input=posterior",
                 "model.hash_hidden=8", "model.hash_similarity_min_bits=16", "loss.similarity=1.0"]) == 0
    return out


def test_an_exported_model_gives_the_checkpoints_codes_exactly_and_loads_without_the_run(tmp_path, run, folder_root):
    assert main(["export", str(run), "--out", str(tmp_path / "exported"), "--no-progress"]) == 0
    folder = tmp_path / "exported" / "bits12"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "gdf-pyg" and config["bits"] == 12 and config["classes"] == ["BLACK SWAN", "BLUE JAY",
                                                                                            "ROCK DOVE"]
    assert config["image_config"]["input_size"] == [3, 64, 64] and "mean" in config["image_config"]
    card = (folder / "README.md").read_text()
    result = json.loads((run / "bits12" / "result.json").read_text())
    assert f"test mAP@all **{result['metrics']['map']:.4f}**" in card and "Classes never trained on" in card
    assert "GDFNet.from_pretrained" in card
    assert "reads a class posterior" in card
    # the 16-bit model keeps the backbone's similarities in its codes, and says so
    assert "keep the backbone's similarities" in (tmp_path / "exported" / "bits16" / "README.md").read_text()
    long_model, _ = load_model(run / "bits16" / "best.pt", "cpu")
    exported_long = GDFNet.from_pretrained(tmp_path / "exported" / "bits16")
    assert long_model.head.similarity_bits == exported_long.head.similarity_bits == 16
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    assert torch.equal(exported_long.encode(pixels), long_model.encode(pixels))
    # Moved away from the run, the checkpoint gone: it loads from the folder alone.
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    checkpoint_model, _ = load_model(run / "bits12" / "best.pt", "cpu")
    shutil.rmtree(run)
    model = GDFNet.from_pretrained(moved)
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    assert torch.equal(model.encode(images), checkpoint_model.encode(images))
    for (name, a), (_, b) in zip(model.state_dict().items(), checkpoint_model.state_dict().items()):
        assert torch.equal(a, b), name
    # and the commands that take a checkpoint take the folder
    assert main(["index", "--checkpoint", str(moved), "--images", str(folder_root), "--out", str(tmp_path / "index"),
                 "--no-progress"]) == 0
    assert main(["eval", "--checkpoint", str(moved), "--query", str(folder_root), "--database", str(folder_root),
                 "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "exported"), "--query", str(folder_root), "--database",
                 str(folder_root), "--out", str(tmp_path / "eval2"), "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "eval2" / "metrics.json").read_text())["results"]
    assert set(evaluated) == {"12", "16"}
    # its split is not in the folder: evaluating on the run's data needs --resplit
    assert main(["eval", "--checkpoint", str(moved), "--out", str(tmp_path / "eval3"), "--no-progress"]) == 2


def test_a_malformed_folder_stops_naming_the_file(tmp_path, run):
    folder = tmp_path / "m"
    assert main(["export", str(run / "bits12" / "best.pt"), "--out", str(folder), "--no-progress"]) == 0
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(PretrainedFormatError, match=r"config.json: format_version 99 is newer than this gdf-pyg reads"):
        GDFNet.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "bits": 16, "model_config": {
        **config["model_config"], "bits": 16, "hash_similarity_min_bits": 0}}))
    with pytest.raises(PretrainedFormatError, match=r"model.safetensors: the weights do not match the model of "
                                                    r"config.json: 3 of another shape \(first head.classifier.weight: \(3, 12\) for \(3, 16\)\)"):
        GDFNet.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    with pytest.raises(PretrainedFormatError, match=r"model.safetensors: unreadable weights"):
        GDFNet.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(PretrainedFormatError, match=r"model.safetensors: missing"):
        GDFNet.from_pretrained(folder)
    with pytest.raises(PretrainedFormatError, match="is not a folder of a pretrained gdf-pyg model"):
        GDFNet.from_pretrained(tmp_path / "nothing" / "here")
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--bits", "24", "--no-progress"]) == 2
