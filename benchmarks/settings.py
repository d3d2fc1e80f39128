"""What the benchmarks share: where the photographs and weights are, the code lengths, the data
sets and their splits, and the cpu preset as the benchmarks train it."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from gdf_pyg.training.config import TrainConfig
from gdf_pyg.training.run import train

SHARED = Path(__file__).resolve().parents[2] / "shared"
LITE0 = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
BITS = (12, 24, 32, 48)
# name -> overrides of the cpu preset; the runs share one feature cache per dataset
DATASETS: Dict[str, List[str]] = {
    "flowers102": ["data.dataset=folder", f"data.root={SHARED / 'data' / 'flowers102'}", "data.query_fraction=0.25",
                   "data.val_fraction=0.1"],
    "birds525": ["data.dataset=folder", f"data.root={SHARED / 'data' / 'birds525'}", "data.query_fraction=0.2",
                 "data.val_fraction=0.25"],
    "cars98": ["data.dataset=folder", f"data.root={SHARED / 'data' / 'cars98'}", "data.query_fraction=0.25",
               "data.val_fraction=0.1"],
}


def similarity_settings(min_bits: int, weight: float, one_code_per_class: bool) -> Tuple[str, ...]:
    """The overrides that say which codes keep the backbone's similarities (from ``min_bits`` bits
    on; 0: none), the term's weight and whether same-class pairs are one code in its target."""
    return (f"model.hash_similarity_min_bits={min_bits}", f"loss.similarity={weight}",
            f"loss.similarity_classes={str(one_code_per_class).lower()}")


# The cpu preset with class codes at every length (no code keeps the backbone's similarities): its
# head before version 0.9, as the finetuning recipes were measured.
CLASS_CODES = similarity_settings(0, 0, False)
# GDF-Net's controls (overrides of either preset): what the graph adds beyond its capacity
CONTROLS: Dict[str, List[str]] = {
    "global pooling": ["model.head=global"],
    "pooling + MLP (capacity control)": ["model.head=mlp"],
    "no edges (control)": ["model.graph.method=none"],
}
QUICK_DATASET = ["data.dataset=synthetic", "data.synthetic.num_classes=6", "data.synthetic.train_per_class=8",
                 "data.synthetic.test_per_class=3", "data.val_fraction=0.25", "model.img_size=64",
                 "model.backbone.name=test_efficientnet", "model.backbone.pretrained=false", "model.graph.k=3",
                 "model.aggregation.hidden_channels=16", "optim.batch_size=8"]


def sample_sd(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1 in the denominator) of the seeds' results; 0 for one."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def difference(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float]:
    r"""The difference of the means of ``a`` and ``b`` and its standard error,
    :math:`\sqrt{s_a^2 / n_a + s_b^2 / n_b}` (Welch's, the seeds of the two settings independent)."""
    gap = statistics.mean(a) - statistics.mean(b)
    return gap, (sample_sd(a) ** 2 / len(a) + sample_sd(b) ** 2 / len(b)) ** 0.5


def dataset_overrides(name: str, root: Optional[Path] = None) -> List[str]:
    """The overrides of data set ``name`` (:data:`DATASETS`), its ``data.root`` replaced by ``root`` if given."""
    if root is None:
        return list(DATASETS[name])
    return [*(o for o in DATASETS[name] if not o.startswith("data.root=")), f"data.root={root}"]


def preset_config(overrides: Sequence[str], seed: int, epochs: int, shared: bool = True,
                  bits: Sequence[int] = BITS) -> TrainConfig:
    """The cpu preset with ``overrides`` as the benchmarks train it: on the CPU, validated every
    second epoch."""
    return TrainConfig.load(preset="cpu", overrides=[
        *overrides, f"train.seed={seed}", f"optim.epochs={epochs}", "train.eval_every=2",
        f"train.shared_encoder={str(shared).lower()}", f"train.bits=[{','.join(map(str, bits))}]", "train.device=cpu"])


def train_preset(overrides: Sequence[str], seed: int, epochs: int, cache: Path, shared: bool = True,
                 bits: Sequence[int] = BITS) -> Tuple[Dict[str, Any], float]:
    """One training run of :func:`preset_config`, in a temporary folder: the results of each
    code length (``train``'s summary) and the wall time."""
    cfg = preset_config(overrides, seed, epochs, shared, bits)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        results = train(cfg, out, cache_dir=cache)["results"]
        return results, time.perf_counter() - t0


def run_variant(base: List[str], variant: List[str], seed: int, epochs: int, cache: Path,
                shared: bool = True, bits: Sequence[int] = BITS) -> Dict[str, float]:
    """One run of the cpu preset with ``base`` and ``variant`` overrides: test mAP and best epoch
    of each code length, and the run's wall time."""
    results, seconds = train_preset([*base, *variant], seed, epochs, cache, shared, bits)
    row = {f"_{b}": results[str(b)]["metrics"]["map"] for b in bits}
    row.update({f"_epoch{b}": results[str(b)]["best_epoch"] for b in bits}, _seconds=seconds)
    return row


def summarise(name: str, runs: List[Dict[str, float]], bits: Sequence[int] = BITS) -> Dict[str, object]:
    row: Dict[str, object] = {"variant": name}
    for b in bits:
        values = [r[f"_{b}"] for r in runs]
        row[f"_{b}"] = values
        row[f"{b} bits"] = f"{statistics.mean(values):.4f} ± {sample_sd(values):.4f}"
    row["s / run"] = statistics.mean(r["_seconds"] for r in runs)
    return row
