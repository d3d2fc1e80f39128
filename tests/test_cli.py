"""train -> checkpoint -> eval -> index -> query through the command line, on tiny data."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gdf_pyg.cli import build_parser, main
from gdf_pyg.retrieval.search import query_index

from .conftest import TINY_RUN, write_image

TINY = [*TINY_RUN, "optim.epochs=2"]


@pytest.mark.parametrize("frozen, amp", [(False, False), (True, False), (False, True)])
def test_train_eval_index_query(tmp_path, folder_root, capsys, frozen, amp):
    run = tmp_path / "run"
    # 30 epochs without a validation split: enough steps for the batch-norm statistics to settle,
    # so the codes differ from image to image and the equality below means something.
    args = ["train", "--out", str(run), "--no-progress", f"data.root={folder_root}", "train.bits=[12,16]",
            f"train.frozen_backbone={str(frozen).lower()}", f"train.amp={str(amp).lower()}", *TINY, "optim.epochs=30",
            "data.val_fraction=0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| bits | mAP@all |" in printed
    for name in ("config.yaml", "split.json", "report.md", "metrics.json", "metrics.csv", "pr_curve.csv",
                 "pr_curve.png", "bits12/best.pt", "bits12/last.pt", "bits16/history.csv"):
        assert (run / name).is_file(), name
    trained = json.loads((run / "metrics.json").read_text())["results"]
    assert set(trained) == {"12", "16"}

    # eval reproduces the final metrics of training exactly, from the checkpoints alone: both
    # encode in float32 in the same batches (also when training ran under autocast).
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval"), "--topk", "5", "--no-progress"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]
    for bits in ("12", "16"):
        assert evaluated[bits]["metrics"] == trained[bits]["metrics"]

    # index the whole folder, then query with one of its images.
    index = tmp_path / "index"
    assert main(["index", "--checkpoint", str(run / "bits12" / "best.pt"), "--images", str(folder_root),
                 "--out", str(index), "--no-progress"]) == 0
    assert json.loads((index / "meta.json").read_text())["num_items"] == 15
    assert len(np.unique(np.load(index / "codes.npy"), axis=0)) >= 5  # codes tell images apart
    query = folder_root / "BLUE JAY" / "2.jpg"
    grid = tmp_path / "grid.png"
    capsys.readouterr()
    assert main(["query", str(query), "--index", str(index), "--topk", "15", "--grid", str(grid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query {query}  [BLUE JAY]" and lines[-1] == f"grid written to {grid}"
    lines = lines[:-1]
    assert len(lines) == 16
    # The query itself is in the index, at distance 0; distances never decrease down the list.
    own = next(ln for ln in lines[1:] if ln.endswith(f"{query}  [BLUE JAY]"))
    assert "d=  0 +" in own
    distances = [int(ln.split("d=")[1].split()[0]) for ln in lines[1:]]
    assert distances == sorted(distances)
    with Image.open(grid) as img:
        assert img.size[0] == 16 * (128 + 4)
    # Exact engines agree.
    a = query_index(index, [query], topk=6, engine="numpy")
    b = query_index(index, [query], topk=6, engine="faiss")
    assert a == b


def test_train_rejects_bad_config(tmp_path, folder_root, caplog):
    args = ["train", "--out", str(tmp_path / "r"), f"data.root={folder_root}", *TINY]
    assert main([*args, "train.bits=[0]"]) == 2
    assert "train.bits[0]: must be a positive number of bits, got 0" in caplog.text
    assert main([*args, "model.graph.method=knm"]) == 2
    assert "model.graph.method: 'knm' is not allowed; expected one of" in caplog.text
    assert main([*args, "optim.batch_size=64"]) == 2
    assert "optim.batch_size: 64 is larger than the 9 training images" in caplog.text
    assert main(["train", "--out", str(tmp_path / "r2"), "data.dataset=folder", f"data.root={tmp_path}/missing"]) == 2
    assert "data.root" in caplog.text and "is not a folder" in caplog.text
    assert not (tmp_path / "r" / "bits12").exists()  # nothing ran


def test_every_option_is_documented_with_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"demo", "train", "eval", "index", "query", "serve", "export"}
    for name, p in sub.choices.items():
        text = p.format_help()
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
                if action.default not in (None, False) and not isinstance(action.default, list):
                    assert f"(default: {action.default})" in text.replace("\n", " ").replace("  ", " "), (name, action.dest)


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| GDF-Net |" in out and "| baseline (global pooling) |" in out
    assert (tmp_path / "demo" / "pr_curve.png").is_file() and (tmp_path / "demo" / "comparison.md").is_file()
    # Both models reuse one cache of backbone features.
    assert len(list((tmp_path / "demo" / "cache").glob("features-*.pt"))) == 1


def test_init_from_starts_from_an_earlier_run(tmp_path, folder_root, caplog):
    from gdf_pyg.engine.inference import load_model

    first = tmp_path / "frozen"
    assert main(["train", "--out", str(first), "--no-progress", f"data.root={folder_root}", "train.bits=[12]",
                 "train.frozen_backbone=true", *TINY]) == 0
    tuned = tmp_path / "tuned"
    assert main(["train", "--out", str(tuned), "--no-progress", f"data.root={folder_root}", "train.bits=[12]",
                 *TINY, f"train.init_from={first}", "optim.lr=1e-12", "optim.backbone_lr=0", "optim.epochs=1"]) == 0
    a, _ = load_model(first / "bits12" / "best.pt")
    b, _ = load_model(tuned / "bits12" / "best.pt")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    assert main(["train", "--out", str(tmp_path / "x"), f"data.root={folder_root}", "train.bits=[12,24]",
                 f"train.init_from={first}", *TINY]) == 2
    assert "train.init_from" in caplog.text and "missing for [24]" in caplog.text


def test_eval_uses_the_runs_split_and_refuses_changed_data(tmp_path, folder_root, caplog):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", f"data.root={folder_root}", "train.bits=[12]",
                 "train.frozen_backbone=true", *TINY]) == 0
    trained = json.loads((run / "metrics.json").read_text())["results"]["12"]["metrics"]

    def evaluate(*extra):
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        code = main(["eval", "--checkpoint", str(run), "--out", str(out), "--topk", "5", "--no-progress", *extra])
        return code, (json.loads((out / "metrics.json").read_text())["results"]["12"]["metrics"] if code == 0 else None)

    # New photos in a class folder: the saved split is evaluated, unchanged.
    for j in range(3):
        write_image(folder_root / "ROCK DOVE" / f"new{j}.jpg", 90 + j)
    assert evaluate() == (0, trained)
    # A photo of the run replaced by another: refused, naming the file.
    write_image(folder_root / "BLUE JAY" / "2.jpg", 99, size=(41, 30))
    assert evaluate()[0] == 2
    assert "1 database file(s) changed size: BLUE JAY/2.jpg" in caplog.text or \
        "1 query file(s) changed size: BLUE JAY/2.jpg" in caplog.text
    assert "--resplit" in caplog.text
    # A photo of the run deleted: refused as well.
    (folder_root / "BLACK SWAN" / "1.jpg").unlink()
    assert evaluate()[0] == 2
    assert "BLACK SWAN/1.jpg" in caplog.text
    # Evaluating the data as it is now is an explicit choice.
    code, metrics = evaluate("--resplit")
    assert code == 0 and metrics is not None
    # Images outside class folders have no label: labelled metrics are refused, with the reason.
    flat = tmp_path / "flat"
    for j in range(2):
        write_image(flat / f"{j}.jpg", j)
    assert evaluate("--query", str(flat), "--database", str(folder_root))[0] == 2
    assert "--query: 2 image(s) have no class" in caplog.text



def test_a_root_of_linked_class_folders_trains_and_evaluates(tmp_path, folder_root):
    # class folders that are symbolic links elsewhere (a subset of a data set): the run lists their
    # files under the linked names, as the photos are found
    linked = tmp_path / "subset"
    linked.mkdir()
    for name in ("BLACK SWAN", "ROCK DOVE"):
        (linked / name).symlink_to(folder_root / name, target_is_directory=True)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", f"data.root={linked}", "train.bits=[12]",
                 "train.frozen_backbone=true", *TINY]) == 0
    identity = json.loads((run / "dataset.json").read_text())
    files = [f for f, _ in identity["database"] + identity["query"]]
    assert len(files) == 10 and all(f.split("/")[0] in ("BLACK SWAN", "ROCK DOVE") for f in files)
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval"), "--topk", "5", "--no-progress"]) == 0


def test_eval_checks_its_data_whatever_the_overrides_and_refuses_a_run_without_its_split(tmp_path, folder_root, caplog):
    import shutil

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", f"data.root={folder_root}", "train.bits=[12]",
                 "train.frozen_backbone=true", *TINY]) == 0

    def evaluate(checkpoint, *extra):
        return main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval"), "--topk", "5",
                     "--no-progress", *extra])

    write_image(folder_root / "BLUE JAY" / "2.jpg", 99, size=(41, 30))  # a photo of the run changed
    # An override, even one that changes nothing about the data, does not switch the check off.
    assert evaluate(run, "data.num_workers=0") == 2
    assert "changed size: BLUE JAY/2.jpg" in caplog.text
    # The data copied elsewhere and named by data.root: the same files, so the same data.
    copy = tmp_path / "copy"
    shutil.copytree(folder_root, copy)
    assert evaluate(run, f"data.root={copy}") == 2  # the copy holds the changed photo too
    write_image(copy / "BLUE JAY" / "2.jpg", 1 * 10 + 1)  # restore the original photo in the copy (seed 11)
    assert evaluate(run, f"data.root={copy}") == 0
    # A checkpoint copied out of its run folder cannot be checked: refused, unless --resplit.
    elsewhere = tmp_path / "elsewhere" / "bits12"
    elsewhere.mkdir(parents=True)
    shutil.copy(run / "bits12" / "best.pt", elsewhere / "best.pt")
    caplog.clear()
    assert evaluate(elsewhere / "best.pt", f"data.root={copy}") == 2
    assert "has no dataset.json and no split.json" in caplog.text and "--resplit" in caplog.text
    assert evaluate(elsewhere / "best.pt", f"data.root={copy}", "--resplit") == 0
    assert "--resplit: an unknown number (the run recorded no dataset.json) of the 3 queries" in caplog.text
    # --resplit in the run folder says how many new queries the model trained on.
    caplog.clear()
    assert evaluate(run, f"data.root={copy}", "--resplit", "data.split_seed=5") == 0
    seen = int(caplog.text.split("--resplit: ")[1].split(" of the")[0])
    assert 0 < seen <= 3 and "their codes were learned" in caplog.text


def test_overrides_mix_with_options_in_any_order(tmp_path, folder_root):
    from gdf_pyg.cli import parse_args

    parser = build_parser()
    a = parse_args(parser, ["train", "--preset", "cpu", "--out", "run", "data.dataset=folder", "--no-progress",
                            f"data.root={folder_root}"])
    b = parse_args(parser, ["train", "data.dataset=folder", f"data.root={folder_root}", "--preset", "cpu", "--out",
                            "run", "--no-progress"])
    assert a.overrides == b.overrides == ["data.dataset=folder", f"data.root={folder_root}"]
    assert a.out == b.out == "run" and a.no_progress and b.no_progress
    with pytest.raises(SystemExit):
        parse_args(parser, ["train", "--out", "run", "data.dataset=folder", "--no-progress", "stray"])
    with pytest.raises(SystemExit):
        parse_args(parser, ["index", "--checkpoint", "c", "--images", "i", "--out", "o", "data.root=x"])
    # and a run typed that way trains on what the overrides say
    assert main(["train", "--out", str(tmp_path / "run"), *TINY[:3], "--no-progress", f"data.root={folder_root}",
                 *TINY[3:], "train.bits=[12]", "train.frozen_backbone=true"]) == 0


def test_serve_and_export_refuse_what_they_cannot_read(tmp_path, caplog):
    assert main(["serve", "--index", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "lacks codes.npy" in caplog.text
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "holds no bits*/best.pt" in caplog.text
