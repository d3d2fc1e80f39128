"""Benchmark 10: retrieval of classes never seen in training.

Codes hashed from the class posterior (``model.hash_input=posterior``) give a photo of a class
the model never saw the code of (a mix of) the training classes it resembles; codes hashed
from the features (``features``) need not. This measures what each costs: the species of a data
set are split at random into seen ones (the training data, a folder data set split as usual) and
unseen ones (their photos split per species into query and database folders by the same query
fraction); every configuration trains on the seen species through the library (frozen Lite0,
cached features, code lengths as heads of one encoder, each at its best validation epoch) and is
evaluated twice: test mAP@all (ties averaged) on the seen species' own test split, and on the
unseen species, the queries ranked among the database photos by the Hamming distance of each
code length's model (what ``gdf-pyg eval --query --database`` reports; the frozen backbone's maps
of those photos are computed once for every run). The folders are symbolic links into the data
set, built in a temporary folder.
"""
from __future__ import annotations

import logging
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

if TYPE_CHECKING:
    from gdf_pyg.models.gdfnet import GDFNet

from gdf_pyg.data.synthetic import SyntheticConfig, SyntheticFineGrained
from gdf_pyg.retrieval.search import IMAGE_SUFFIXES
from gdf_pyg.training.config import TrainConfig
from gdf_pyg.training.run import train

from .common import barh_plot, base_parser, command_line, markdown_table, write_results
from .settings import (BITS, CLASS_CODES, DATASETS, LITE0, QUICK_DATASET, SHARED, dataset_overrides, preset_config,
                       sample_sd, similarity_settings)

# every configuration states its similarity settings: the preset's are those of one of them
PRESET = "cpu preset 0.10: 48-bit codes near the backbone's similarities (weight 1), one code per class"
CONFIGS: Dict[str, List[str]] = {
    "hash layer on the features (cpu preset 0.5)": ["model.hash_input=features", *CLASS_CODES],
    "hash layer on the class posterior (cpu preset 0.6)": ["model.hash_input=posterior", *CLASS_CODES],
    PRESET: ["model.hash_input=posterior", *similarity_settings(48, 1.0, True)],
    "cpu preset 0.10, the 48-bit head detached from the shared encoder": [
        "model.hash_input=posterior", *similarity_settings(48, 1.0, True), "model.hash_similarity_detached=true"],
    "cpu preset 0.9: 48-bit codes near the backbone's similarities (weight 3), one code per class": [
        "model.hash_input=posterior", *similarity_settings(48, 3.0, True)],
    "features, codes kept near the backbone's similarities": ["model.hash_input=features",
                                                              *similarity_settings(0, 1.0, False)],
    "every code near the backbone's similarities": ["model.hash_input=posterior", *similarity_settings(1, 1.0, False)],
    "every code near the backbone's similarities (weight 3)": ["model.hash_input=posterior",
                                                               *similarity_settings(1, 3.0, False)],
    "every code near the backbone's similarities, one code per class": ["model.hash_input=posterior",
                                                                         *similarity_settings(1, 1.0, True)],
}
REFERENCE = "float cosine of the backbone's pooled features (no training)"


def encode_held_out(folders: Path, image_config: Dict, fn) -> List[Tuple[Tensor, Tensor]]:
    """``(fn(images), labels)`` of the held-out species' database and query photos (uint8 images
    in the backbone's evaluation transform, in batches of 16)."""
    import torch

    from gdf_pyg.data import ImageRecordDataset, decode_size, eval_transform
    from gdf_pyg.engine.encoding import encode_dataset
    from gdf_pyg.retrieval.search import collect_images

    sets, classes = [], []
    for part in ("database", "query"):
        records, classes = collect_images(folders / part, classes)
        data = ImageRecordDataset(records, eval_transform(image_config),
                                  decode_size=decode_size(image_config, training=False))
        values = encode_dataset(fn, data, 16, torch.device("cpu")).values
        sets.append((values, torch.tensor([r.label for r in records])))
    return sets


def cosine_reference(folders: Path, backbone: str, weights: Optional[Path], img_size: int) -> float:
    """mAP@all of the held-out species' queries ranked among their database photos by the cosine of
    the ImageNet backbone's pooled features (its classifier's input: 1,280 floats for Lite0)."""
    import torch

    from gdf_pyg.nn.backbone import create_timm_model, image_config_of
    from gdf_pyg.retrieval.metrics import score_mean_average_precision

    model = create_timm_model(backbone, pretrained=weights is not None, weights_file=weights, num_classes=0).eval()
    config = image_config_of(backbone, img_size)
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    embed = lambda x: torch.nn.functional.normalize(model((x.float() / 255.0 - mean) / std), dim=1)  # noqa: E731
    (db, db_labels), (q, q_labels) = encode_held_out(folders, config, embed)
    return score_mean_average_precision(q @ db.T, q_labels, db_labels)


def synthetic_folder(out: Path, num_classes: int = 6, per_class: int = 8) -> Path:
    """The built-in synthetic classes written as a folder data set (for ``--quick``)."""
    from torchvision.utils import save_image

    data = SyntheticFineGrained(SyntheticConfig(num_classes=num_classes, train_per_class=per_class), img_size=64)
    for label, name in enumerate(data.classes):
        (out / name).mkdir(parents=True)
        for i in range(per_class):
            save_image(data.render(label, i), out / name / f"{i}.png")
    return out


def split_species(root: Path, unseen_fraction: float, query_fraction: float, seed: int, out: Path) -> Dict[str, int]:
    """Links ``root``'s species folders into ``out/seen`` and their photos into ``out/query`` and
    ``out/database`` (unseen species); returns the counts."""
    species = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rng = random.Random(seed)
    unseen = set(rng.sample(species, max(1, round(unseen_fraction * len(species)))))
    if len(unseen) == len(species):
        raise SystemExit(f"--unseen-fraction {unseen_fraction} leaves no species of {root} to train on")
    counts = {"seen species": 0, "unseen species": 0, "unseen queries": 0, "unseen database": 0}
    for folder in species:
        if folder not in unseen:
            (out / "seen").mkdir(parents=True, exist_ok=True)
            (out / "seen" / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
            counts["seen species"] += 1
            continue
        photos = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        rng.shuffle(photos)
        n_query = max(1, round(query_fraction * len(photos)))
        for part, files, count in (("query", photos[:n_query], "unseen queries"),
                                   ("database", photos[n_query:], "unseen database")):
            (out / part / folder.name).mkdir(parents=True, exist_ok=True)
            for f in files:
                (out / part / folder.name / f.name).symlink_to(f.resolve())
            counts[count] += len(files)
        counts["unseen species"] += 1
    return counts


class HeldOutMaps:
    """The held-out species' query and database photos as feature maps of the frozen backbone,
    computed once (every run's backbone is the same frozen one) and hashed by each run's models."""

    def __init__(self, folders: Path) -> None:
        self.folders = folders
        self.sets: Optional[List[Tuple[Tensor, Tensor]]] = None

    def codes(self, model: "GDFNet") -> List[Tuple[Tensor, Tensor]]:
        """(codes, labels) of the database and the queries under ``model``."""
        import torch

        if self.sets is None:
            self.sets = encode_held_out(self.folders, model.image_config, model.forward_features)
        return [(torch.cat([model.encode_features(m) for m in maps.split(256)]), labels) for maps, labels in self.sets]


def run(base: List[str], overrides: List[str], held_out: HeldOutMaps, seed: int, epochs: int, cache: Path,
        bits: Sequence[int]) -> Dict[str, float]:
    """Trains on ``base`` (the seen species) with ``overrides``; test mAP on the seen and the unseen species."""
    from gdf_pyg.engine.inference import load_model
    from gdf_pyg.retrieval.evaluation import evaluate_codes

    cfg = preset_config([*base, *overrides], seed, epochs, shared=True, bits=bits)
    if not cfg.train.frozen_backbone:
        raise SystemExit("the held-out species are hashed from the frozen backbone's maps: train.frozen_backbone=true")
    row: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out:
        results = train(cfg, out, cache_dir=cache)["results"]
        for b in bits:
            (db, db_labels), (q, q_labels) = held_out.codes(load_model(Path(out) / f"bits{b}" / "best.pt", "cpu")[0])
            row[f"_unseen {b}"] = evaluate_codes(q, q_labels, db, db_labels, (10,), 0)[0]["map"]
    row.update({f"_seen {b}": results[str(b)]["metrics"]["map"] for b in bits})
    row.update({f"_seen val {b}": results[str(b)]["val_map"] for b in bits})
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "unseen_classes")
    p.add_argument("--dataset", default="flowers102", choices=list(DATASETS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS)[1:3], choices=list(CONFIGS),
                   help=f"configurations (default: the class posterior's codes and the preset's): {list(CONFIGS)}")
    p.add_argument("--unseen-fraction", type=float, default=0.2, help="fraction of the species held out of training")
    p.add_argument("--seeds", type=int, default=1, help="training seeds (the species split uses --split-seed)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--cache", type=Path, default=Path("runs/cache"))
    args = p.parse_args(argv)
    if not 0 < args.unseen_fraction < 1:
        p.error(f"--unseen-fraction must be in (0, 1), got {args.unseen_fraction}")
    logging.basicConfig(level=logging.WARNING)
    bits = BITS
    with tempfile.TemporaryDirectory() as tmp:
        folders = Path(tmp) / "split"
        if args.quick:  # a synthetic folder data set and the tiny model: seconds
            root, bits = synthetic_folder(Path(tmp) / "data"), (12, 16)
            base = ["data.dataset=folder", f"data.root={folders / 'seen'}",
                    *[o for o in QUICK_DATASET if not o.startswith("data.")], "data.query_fraction=0.25",
                    "data.val_fraction=0.25"]
            args.epochs, args.unseen_fraction = min(args.epochs, 2), 0.34
        else:
            root = SHARED / "data" / args.dataset
            if not root.is_dir():
                raise SystemExit(f"{root} not found: this benchmark needs the shared data sets")
            base = [*dataset_overrides(args.dataset, folders / "seen"), f"model.backbone.weights_file={LITE0}"]
        # the held-out species are split into queries and database as the data set's own split is
        query_fraction = TrainConfig.load(preset="cpu", overrides=[*base, f"data.root={root}"]).data.query_fraction
        counts = split_species(root, args.unseen_fraction, query_fraction, args.split_seed, folders)
        cfg = preset_config(base, 0, 2)  # the backbone and image size the configurations train with
        weights = None if args.quick else LITE0
        reference = cosine_reference(folders, cfg.model.backbone.name, weights, cfg.model.img_size)
        held_out = HeldOutMaps(folders)
        rows: List[Dict[str, object]] = [{"config": REFERENCE, **{f"seen {b}": "" for b in bits},
                                          **{f"unseen {b}": f"{reference:.4f}" for b in bits}, "_reference": reference}]
        print(f"done: {REFERENCE}: unseen {reference:.4f}", flush=True)
        for config in args.configs:
            runs = [run(base, CONFIGS[config], held_out, seed, args.epochs, args.cache, bits) for seed in range(args.seeds)]
            row: Dict[str, object] = {"config": config}
            for key in runs[0]:
                values = [r[key] for r in runs]
                row[key] = values
                row[key[1:]] = (f"{statistics.mean(values):.4f} ± {sample_sd(values):.4f}" if len(values) > 1
                                else f"{values[0]:.4f}")
            rows.append(row)
            print(f"done: {config}: " + ", ".join(f"{k[1:]} {row[k[1:]]}" for k in runs[0]), flush=True)
    for row in rows[1:]:  # each configuration's unseen-species mAP as a fraction of the float reference
        row[f"unseen {bits[-1]} / float"] = (f"{statistics.mean(row[f'_unseen {bits[-1]}']) / reference:.2f}x"
                                             if reference else "")
    columns = ["config", *[f"seen {b}" for b in bits], *[f"unseen {b}" for b in bits], f"unseen {bits[-1]} / float"]
    name = f"unseen_classes_{'quick' if args.quick else args.dataset}"
    name += f"_split{args.split_seed}" if args.split_seed else ""
    body = (f"{'synthetic (quick)' if args.quick else args.dataset}: {counts['seen species']} species trained on, "
            f"{counts['unseen species']} held out (split seed {args.split_seed}; {counts['unseen queries']} queries, "
            f"{counts['unseen database']} database photos); {args.epochs} epochs, shared encoder, {args.seeds} seed(s); "
            "test mAP@all (ties averaged) on the seen species' test split (seen) and on the held-out species (unseen).\n\n"
            + markdown_table(rows, columns))
    md = write_results(args.results, name, "Retrieval of classes never seen in training", body, rows,
                       command_line(argv, "unseen_classes"))
    barh_plot([f"{r['config']}, {b} bits" for r in rows[1:] for b in bits],
              [statistics.mean(r[f"_unseen {b}"]) for r in rows[1:] for b in bits], "mAP@all on the unseen species",
              args.results / f"{name}.png", f"{args.dataset if not args.quick else 'quick'}: species never trained on")
    print(body)
    print(f"\nwritten: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
