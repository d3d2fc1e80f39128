"""A trained run's models in the form the ecosystem shares them (``gdf-pyg export``): one
self-contained folder per code length, with the weights, the configuration and a model card that
says what the model was trained on, how it was evaluated and what it is not for."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..models.gdfnet import GDFNet
from ..utils.checks import ConfigError
from ..utils.version import __version__
from .inference import load_model

log = logging.getLogger(__name__)

__all__ = ["export_checkpoint", "export_run", "model_card"]


def _run_checkpoints(run: Path, bits: Optional[Sequence[int]]) -> Dict[int, Path]:
    if run.is_file():
        return {0: run}
    found = {int(p.parent.name[4:]): p for p in run.glob("bits*/best.pt")}
    if not found:
        raise ConfigError(f"{str(run)!r} holds no bits*/best.pt: expected a run folder or a best.pt checkpoint")
    if bits:
        missing = sorted(set(bits) - set(found))
        if missing:
            raise ConfigError(f"--bits {missing}: the run {str(run)!r} has models of {sorted(found)} bits")
        found = {b: found[b] for b in bits}
    return dict(sorted(found.items()))


def export_run(run: Path | str, out: Path | str, bits: Optional[Sequence[int]] = None) -> List[Path]:
    """Exports the models of a run folder (every code length, or ``bits``) or of one ``best.pt``:
    into ``out`` itself for one model, else into ``out/bits{K}``."""
    run, out = Path(run), Path(out)
    checkpoints = _run_checkpoints(run, bits)
    if len(checkpoints) == 1:
        return [export_checkpoint(next(iter(checkpoints.values())), out)]
    return [export_checkpoint(path, out / f"bits{b}") for b, path in checkpoints.items()]


def export_checkpoint(checkpoint: Path | str, out: Path | str) -> Path:
    """One trained model (``bits{K}/best.pt``) as a folder: ``model.safetensors``, ``config.json``
    and the model card ``README.md`` (with the run's test results, read from ``result.json``)."""
    checkpoint = Path(checkpoint)
    model, state = load_model(checkpoint, "cpu")
    result_file = checkpoint.parent / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    info = {"train_config": state.get("config", {}), "device": state.get("device", "cpu"),
            "results": {k: result[k] for k in ("metrics", "queries", "database", "best_epoch", "val_map") if k in result},
            "exported_from": str(checkpoint.resolve()), "gdf_pyg_version": __version__}
    folder = model.save_pretrained(out, classes=state.get("classes", []), card=model_card(model, state, result), **info)
    log.info("exported %s to %s", checkpoint, folder)
    return folder


def _card_facts(model: GDFNet, state: Dict[str, Any], result: Dict[str, Any]) -> Dict[str, str]:
    """The sentences of the model card that depend on the run: classes, split, results, limits."""
    data = state.get("config", {}).get("data", {})
    classes = list(state.get("classes", []))
    metrics = result.get("metrics", {})
    named = ", ".join(classes[:8]) + (f" and {len(classes) - 8} more" if len(classes) > 8 else "")
    split = (f"split per class into database (training) and query (test) images with query fraction "
             f"{data.get('query_fraction')} and split seed {data.get('split_seed')}" if data.get("dataset") == "folder"
             else f"the official training / test split of `{data.get('dataset')}`")
    evaluation = ("no test results were recorded beside the checkpoint" if not metrics else
                  f"test mAP@all **{metrics['map']:.4f}** with ties averaged (the expected AP over every order of "
                  f"the photos at equal Hamming distance), {metrics.get('map_db_order', float('nan')):.4f} with ties in "
                  f"database order; {result.get('queries')} test photos searched among {result.get('database')} "
                  f"training photos by Hamming distance of the {model.bits}-bit codes")
    if model.head.similarity_bits:
        unseen = ("its codes also keep the backbone's similarities between photos, so photos of classes it never "
                  "saw keep much of their neighbours, though retrieval among them is weaker than among trained ones "
                  "(`benchmarks/unseen_classes.py` measures it)")
    elif model.config.hash_input != "features":
        unseen = ("its hash layer reads a class posterior, so a photo of a class it never saw gets the code of the "
                  "trained class it resembles most (or a mix): retrieval among classes never trained on is much "
                  "weaker than among trained ones (`benchmarks/unseen_classes.py` measures it)")
    else:
        unseen = ("photos of classes it never saw get codes of what the model learned from the trained classes: "
                  "retrieval among them is weaker than among trained ones")
    return {"named": named, "split": split, "evaluation": evaluation, "unseen": unseen}


def model_card(model: GDFNet, state: Dict[str, Any], result: Dict[str, Any]) -> str:
    """The model card: what, trained on what, evaluated how, for what, with which limits, loaded how."""
    cfg = state.get("config", {})
    data, train = cfg.get("data", {}), cfg.get("train", {})
    m = model.config
    classes = list(state.get("classes", []))
    f = _card_facts(model, state, result)
    posterior = m.hash_input != "features"
    named, split, evaluation, unseen = f["named"], f["split"], f["evaluation"], f["unseen"]
    return f"""# GDF-Net, {model.bits}-bit hash codes for fine-grained image retrieval

Binary codes of photos for retrieval by Hamming distance: GDF-Net (Sun et al., Signal Processing:
Image Communication 110, 2022) trained with gdf-pyg {__version__}.

## Model
- backbone `{m.backbone.name}` at {m.img_size} px ({'fine-tuned' if not train.get('frozen_backbone') else 'frozen'}), \
{m.nodes.kind} region nodes, `{m.graph.method}` graph (k = {m.graph.k}), {m.aggregation.num_layers} `{m.aggregation.conv}` \
layers of {m.aggregation.hidden_channels} channels, head `{m.head}`
- hash layer on the {'class posterior' if posterior else 'features'}, {model.bits} bits, {len(classes)} classes
- input transform: `config.json` → `image_config` (timm's data config of the backbone)

## Training data
`{data.get('dataset')}` at `{data.get('root')}`: {len(classes)} classes ({named}); {split}; a \
{data.get('val_fraction')} fraction of the training photos held out to choose the epoch (epoch {result.get('best_epoch')}, \
validation mAP {result.get('val_map')}); the test photos were not looked at to choose anything.

## Evaluation
{evaluation}.

## Intended use
Searching a collection of photos of the classes above by similarity of their codes (`gdf-pyg index`,
`gdf-pyg query`, `gdf-pyg serve`), and as a starting point for research on graph-based hashing.

## Limitations
- Classes never trained on: {unseen}.
- Trained on {result.get('database', 'the')} photos of one source: other cameras, crops or domains were not measured.
- Codes binarise the model's float32 output; on another device they may differ in the rare bit that
  sits at 0 by float rounding.

## How to load
```python
from gdf_pyg import GDFNet

model = GDFNet.from_pretrained("path/to/this/folder")   # or a hub id where a network is
codes = model.encode(images)                            # uint8 pixels (B, 3, {m.img_size}, {m.img_size}) -> (B, {model.bits}) in {{-1, +1}}
```
```bash
gdf-pyg index --checkpoint path/to/this/folder --images photos/ --out photos.index
gdf-pyg serve --index photos.index
```
"""
