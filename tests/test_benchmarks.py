"""Every benchmark script runs in --quick mode and writes its table, data and plot."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import FLOWERS, ROOT, needs_flowers, write_image

SCRIPTS = ["graph_construction", "retrieval_engine", "training_throughput", "ablation", "short_codes", "unseen_classes",
           "serve",
           pytest.param("paper_setting", marks=needs_flowers), pytest.param("pipeline", marks=needs_flowers),
           pytest.param("gpu_training", marks=needs_flowers)]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def run_quick(script, tmp_path, *extra):
    cmd = [sys.executable, "-m", f"benchmarks.{script}", "--quick", "--results", str(tmp_path), *extra]
    res = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode(script, tmp_path):
    if script == "serve":
        pytest.importorskip("fastapi", reason="the serve extra is not installed")
        write_image(tmp_path / "photo.jpg", 3, size=(80, 60))
    extra = {"serve": ["--photo", str(tmp_path / "photo.jpg")], "ablation": ["--cache", str(tmp_path / "cache")], "short_codes": ["--cache", str(tmp_path / "cache")],
             "unseen_classes": ["--cache", str(tmp_path / "cache")],
             "paper_setting": ["--data", str(FLOWERS)], "gpu_training": ["--photos", str(FLOWERS)]}
    out = run_quick(script, tmp_path, *extra.get(script, []))
    name = f"{script}_quick" + ("_cpu" if script == "gpu_training" else "")
    md = (tmp_path / f"{name}.md").read_text()
    assert md.startswith("# ") and f"python -m benchmarks.{script} --quick" in md and "|---" in md
    assert json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    if script == "graph_construction":
        assert "| NO |" not in md  # the kNN backends agreed
    if script == "retrieval_engine":
        assert "| NO |" not in md
        rows = json.loads((tmp_path / f"{name}.json").read_text())
        maps = [r for r in rows if "ties" in r]
        assert {r["ties"] for r in maps} == {"average", "database_order"}
        assert all(r["max |ours - reference|"] < 1e-12 for r in maps)  # both rules equal their float64 references
    if script == "short_codes":
        rows = json.loads((tmp_path / f"{name}.json").read_text())
        assert [r["bits"] for r in rows] == [12, 24, 32, 48]
        for r in rows:  # the mAP the diagnosis recomputes is the one training selected the model by
            recorded = json.loads((tmp_path / "short_codes_quick_run" / f"bits{r['bits']}" / "result.json").read_text())
            assert r["val mAP"] == pytest.approx(recorded["val_map"], abs=1e-6)
    if script == "unseen_classes":
        assert "4 species trained on, 2 held out (split seed 0; 4 queries, 12 database photos)" in md
        reference, *rows = json.loads((tmp_path / f"{name}.json").read_text())
        assert reference["config"] == "float cosine of the backbone's pooled features (no training)"
        assert [r["config"].split(" (")[0] for r in rows] == ["hash layer on the class posterior",
                                                              "cpu preset 0.10: 48-bit codes near the backbone's similarities"]
        for r in rows:  # each cell is the mean of its seeds' results, as recorded, and its share of the reference
            for split in ("seen", "unseen"):
                for b in (12, 16):
                    assert r[f"{split} {b}"] == f"{r[f'_{split} {b}'][0]:.4f}" and len(r[f"_{split} {b}"]) == 1
            assert r["unseen 16 / float"] == f"{r['_unseen 16'][0] / reference['_reference']:.2f}x"
    if script == "gpu_training":
        rows = json.loads((tmp_path / f"{name}.json").read_text())
        runs, extra = rows[:-1], rows[-1]
        assert [r["preset"] for r in runs] == ["paper (fine-tuned)", "cpu (fine-tuned)", "finetune (fine-tuned)"]
        for r in runs:  # the steps read nothing back; the run trained; the comparison is the same run's
            assert r["syncs/step (steps)"] == 0 and r["steps"] > 0
            assert r["ours / bare"] == pytest.approx(r["images/s"] / r["bare backbone images/s"])
            assert 0 <= r["data wait"] <= 1 and 0 < r["validation share"] < 1 and r["preset eval_every"] >= 1
            assert r["validation share"] == pytest.approx(
                r["validation s"] / (r["validation s"] + r["preset eval_every"] * r["epoch s"]))
        cache = extra["feature_cache"]
        assert cache["cache / loader"] == pytest.approx(cache["feature cache images/s"] / cache["eval loader images/s"])
    if script == "serve":
        rows = json.loads((tmp_path / f"{name}.json").read_text())
        assert [r["request"].split(" (")[0] for r in rows] == [
            "POST /api/search, a photo of the collection", "POST /api/search, an uploaded JPEG",
            "apart: encoding the upload", "apart: the FAISS search, top-10"]
        assert "10,000 random 64-bit codes" in md
    if script == "paper_setting":
        assert "backbone: random initialisation (no --weights given)" in out
        rows = json.loads((tmp_path / f"{name}.json").read_text())
        assert rows[-1]["loss"] < rows[0]["loss"] and rows[0]["loss_fell"]
        assert all(r["images/s"] > 0 and r["peak memory (MB)"] > 0 for r in rows)


def test_paper_setting_epoch_on_a_cub_sized_synthetic_set(tmp_path):
    run_quick("paper_setting", tmp_path, "--cub-synthetic")
    row = json.loads((tmp_path / "paper_cub_synthetic_quick.json").read_text())[0]
    assert row["images"] == 24 and row["queries"] == 12 and 0 <= row["mAP@all"] <= 1 and row["train images/s"] > 0


@needs_flowers
def test_pipeline_reports_every_stage_against_its_floor(tmp_path):
    run_quick("pipeline", tmp_path)
    rows = json.loads((tmp_path / "pipeline_quick.json").read_text())
    assert {r["stage"].split(" (")[0] for r in rows} >= {"encode real JPEGs", "mAP@all, ties averaged"}
    for r in rows:  # each ratio is the median over rounds of our speed against the floor's, measured alike
        speed = r["floor"] / r["ours"] if r["stage"].endswith("(seconds)") else r["ours"] / r["floor"]
        assert r["ours / floor"] == pytest.approx(speed, rel=0.25)


def test_finetuning_compares_recipes_with_the_frozen_model_and_keeps_finished_runs(tmp_path):
    import yaml

    from benchmarks.finetuning import CLASS_FROZEN, FROZEN

    recipes = ["--recipes", "from frozen, 2 epochs (0.4.0's recipe)", "end to end, 8 epochs, backbone lr 1e-4"]
    runs = tmp_path / "runs"
    out = run_quick("finetuning", tmp_path, "--runs", str(runs), "--jobs", "2", *recipes)
    assert out.count("done: ") == 8  # 2 recipes and their 2 frozen references x 2 seeds
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "finetuning_quick.json").read_text())}
    assert set(rows) == {FROZEN, CLASS_FROZEN, *recipes[1:]} and all(r["seeds"] == 2 for r in rows.values())
    from_frozen = rows["from frozen, 2 epochs (0.4.0's recipe)"]
    assert "24 bits" not in from_frozen and "(" in from_frozen["12 bits"]  # its code lengths, with the gap
    assert "(" in rows[CLASS_FROZEN]["48 bits"] and "(" not in rows[FROZEN]["48 bits"]  # against the preset
    for seed in (0, 1):  # the "from frozen" runs started from their seed's class-code frozen model
        config = next((runs / "synthetic" / f"s{seed}").glob("from-frozen-2-epochs*/config.yaml")).read_text()
        assert f"s{seed}/frozen" in config
        preset = yaml.safe_load((runs / "synthetic" / f"s{seed}" / "frozen-backbone-cpu-preset" / "config.yaml").read_text())
        classes = yaml.safe_load((runs / "synthetic" / f"s{seed}" / "frozen" / "config.yaml").read_text())
        assert (preset["model"]["hash_similarity_min_bits"], classes["model"]["hash_similarity_min_bits"]) == (48, 0)
    # The 4 frozen runs share a cache: a file per seed (the quick set's backbone is initialised
    # from the seed; from a weights file every seed reads one), both heads of a seed reading it.
    assert len(list((runs / "synthetic" / "cache").glob("features-*.pt"))) == 2
    recorded = [json.loads((runs / "synthetic" / f"s{s}" / "frozen" / "bits12" / "result.json").read_text())["val_map"]
                for s in (0, 1)]
    assert rows[CLASS_FROZEN]["_val 12"] == pytest.approx(recorded)
    # A second call runs nothing already in the runs file and writes the same table.
    again = run_quick("finetuning", tmp_path, "--runs", str(runs), "--jobs", "2", *recipes)
    assert "done: " not in again
    assert json.loads((tmp_path / "finetuning_quick.json").read_text()) == list(rows.values())


def test_the_unseen_classes_benchmark_s_preset_is_the_cpu_preset():
    from benchmarks.unseen_classes import CONFIGS, PRESET
    from gdf_pyg import __version__
    from gdf_pyg.training.config import TrainConfig

    assert PRESET.startswith(f"cpu preset {'.'.join(__version__.split('.')[:2])}: ")
    data = ["data.dataset=synthetic"]
    assert (TrainConfig.load(preset="cpu", overrides=[*data, *CONFIGS[PRESET]])
            == TrainConfig.load(preset="cpu", overrides=data))


def test_finetuned_controls_are_measured_against_the_finetune_preset():
    from benchmarks.finetuning import FINETUNE, FROZEN, RECIPES, summarise
    from benchmarks.settings import CONTROLS

    control = "finetune preset, no edges (control)"
    assert RECIPES[control].overrides == (*RECIPES[FINETUNE].overrides, *CONTROLS["no edges (control)"])
    maps = {FROZEN: (0.60, 0.62), FINETUNE: (0.80, 0.84), control: (0.75, 0.77)}
    records = [{"recipe": name, "seed": seed, "seconds": 1.0,
                **{str(b): {"map": value, "val_map": value, "top1": value} for b in (12, 24, 32, 48)}}
               for name, values in maps.items() for seed, value in enumerate(values)]
    rows = {r["recipe"]: r for r in summarise(records, [0, 1])}
    se = (0.04**2 / 4 + 0.02**2 / 4) ** 0.5  # two seeds: sd^2 / n = (difference of the two)^2 / 4
    assert rows[control]["12 bits"] == f"0.7600 ± 0.0141 ({0.76 - 0.82:+.4f} ± {se:.4f}, beyond 2 se)"
    assert rows[FINETUNE]["12 bits"].endswith(f"({0.82 - 0.61:+.4f} ± {se:.4f}, beyond 2 se)")  # to the frozen model


def test_defaults_rounds_are_a_ledger_the_markdown_is_generated_from(tmp_path):
    from benchmarks.common import append_ledger
    from benchmarks.defaults import LEDGER, render

    folder = ROOT / "benchmarks" / "results" / "defaults"
    records = [json.loads(line) for line in (folder / LEDGER).read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, len(records) + 1))
    assert all({"version", "date", "rows"} <= set(r) for r in records)
    assert (folder / "defaults.md").read_text() == render(records)  # the committed file is the ledger's
    # A new round is appended, numbered, and rendered as a table of its rows.
    ledger = tmp_path / LEDGER
    ledger.write_text((folder / LEDGER).read_text())
    rows = [{"candidate": "optim.lr=0.01", "val 12": 0.5, "s": 3.0}]
    every = append_ledger(ledger, {"dataset": "flowers102", "version": "9.9", "date": "2030-01-01",
                                   "command": "python -m benchmarks.defaults --candidates optim.lr=0.01",
                                   "description": "a test round.", "columns": ["candidate", "val 12", "s"], "rows": rows})
    assert len(every) == len(records) + 1 and every[-1]["round"] == len(records) + 1
    assert [json.loads(line) for line in ledger.read_text().splitlines()] == every
    text = render(every)
    assert render(records).rstrip("\n") in text
    assert f"## Round {len(every)}: flowers102, version 9.9, 2030-01-01" in text
    assert "| optim.lr=0.01 | 0.5 | 3 |" in text


def test_spread_is_the_sample_sd_and_differences_carry_their_standard_error():
    from benchmarks.settings import difference, sample_sd, summarise

    assert sample_sd([1.0, 2.0, 3.0]) == 1.0 and sample_sd([0.5]) == 0.0  # n - 1: 0.816 would be the population's
    gap, se = difference([1.0, 2.0, 3.0], [2.0, 2.0, 4.0])
    assert gap == pytest.approx(-2 / 3) and se == pytest.approx((1 / 3 + (4 / 3) / 3) ** 0.5)
    row = summarise("x", [{"_12": v, "_24": v, "_32": v, "_48": v, "_seconds": 1.0} for v in (0.1, 0.2, 0.3)])
    assert row["12 bits"] == "0.2000 ± 0.1000"


def test_the_page_screenshot_is_taken_after_the_hits_are_shown(tmp_path):
    import shutil

    pytest.importorskip("selenium", reason="the serve extra is not installed")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    out = run_quick("screenshot", tmp_path)
    assert "written:" in out and "(5 hits shown)" in out
    assert (tmp_path / "page_quick.png").stat().st_size > 10_000
    assert "5 hits shown for `2.jpg`" in (tmp_path / "page_quick.md").read_text()


def test_the_finetune_preset_is_the_finetuning_benchmark_s_recipe(tmp_path):
    from benchmarks.finetuning import FINETUNE, RECIPES
    from gdf_pyg.training.config import TrainConfig

    (tmp_path / "a").mkdir()
    data = [f"data.root={tmp_path}", "data.dataset=folder"]
    assert TrainConfig.load(preset="finetune", overrides=data) == TrainConfig.load(
        preset="cpu", overrides=[*data, *RECIPES[FINETUNE].overrides])
