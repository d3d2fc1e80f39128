"""Correctness of the mixed-precision path on a device (run by ``run_gpu.sh`` on a card).

1. kNN graphs built under bfloat16 autocast equal the float32 graphs (dense and auto backends,
   Euclidean and cosine), for features with a large shared offset.
2. A run trained under autocast (frozen and fine-tuned backbone) reports the mAP that
   ``gdf-pyg eval`` computes from its checkpoints, exactly.

Writes ``gpu_checks[_<device>].md`` with one line per check; exits 1 when a check fails.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from gdf_pyg.cli import main as cli
from gdf_pyg.nn.graph import knn_graph

from .common import base_parser, command_line, device_label, resolve, slug, write_results

TINY = ["data.dataset=synthetic", "data.synthetic.num_classes=6", "data.synthetic.train_per_class=8",
        "data.synthetic.test_per_class=3", "model.backbone.name=test_efficientnet", "model.backbone.pretrained=false",
        "model.img_size=64", "model.graph.k=3", "model.aggregation.hidden_channels=16", "optim.epochs=30",
        "data.val_fraction=0",
        "optim.batch_size=8", "train.bits=[12,32]", "train.amp=true", "eval.topks=[5]"]


def graph_checks(device: torch.device) -> List[Tuple[str, bool]]:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4 * 196, 1024, generator=g) + 10 * torch.randn(1, 1024, generator=g)).to(device)
    batch = torch.arange(4, device=device).repeat_interleave(196)
    out = []
    for backend in ("dense", "auto"):
        for cosine in (False, True):
            ref = knn_graph(x, 8, batch, cosine=cosine, backend=backend)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                amp = knn_graph(x, 8, batch, cosine=cosine, backend=backend)
            same = torch.equal(amp, ref)
            out.append((f"kNN under bf16 autocast = float32 graph ({backend}, cosine={cosine}): "
                        f"{int((amp != ref).any(0).sum())} of {ref.size(1)} edges differ", same))
    return out


def _distinct_codes(checkpoint: Path, device: torch.device) -> int:
    """How many different codes the model gives the test images (1 would make the check vacuous)."""
    from gdf_pyg.data import SyntheticConfig, SyntheticFineGrained
    from gdf_pyg.training.run import load_model

    model, _ = load_model(checkpoint, device)
    data = SyntheticFineGrained(SyntheticConfig(num_classes=6, train_per_class=8, test_per_class=3), 64, "test",
                                model.mean, model.std)
    images = torch.stack([data[i][0] for i in range(len(data))]).to(device)
    return len(torch.unique(model.encode(images), dim=0))


def train_eval_checks(device: torch.device) -> List[Tuple[str, bool]]:
    out = []
    for frozen in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            args = ["train", "--out", str(run), "--no-progress", *TINY, f"train.device={device}",
                    f"train.frozen_backbone={str(frozen).lower()}"]
            ok = cli(args) == 0 and cli(["eval", "--checkpoint", str(run), "--out", str(Path(tmp) / "eval"),
                                         "--topk", "5", "--device", str(device), "--no-progress"]) == 0
            trained = json.loads((run / "metrics.json").read_text())["results"] if ok else {}
            evaluated = json.loads((Path(tmp) / "eval" / "metrics.json").read_text())["results"] if ok else {}
            for bits in ("12", "32"):
                a = trained.get(bits, {}).get("metrics", {}).get("map")
                b = evaluated.get(bits, {}).get("metrics", {}).get("map")
                distinct = _distinct_codes(run / f"bits{bits}" / "best.pt", device) if ok else 0
                out.append((f"train (bf16 autocast, frozen={frozen}) mAP@all {a} = eval of its checkpoint {b} "
                            f"({bits} bits; {distinct} distinct codes of the 18 queries)",
                            ok and a is not None and distinct > 1 and trained[bits]["metrics"] == evaluated[bits]["metrics"]))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = base_parser(__doc__.splitlines()[0], "gpu_checks").parse_args(argv)
    device = resolve(args.device)
    checks = graph_checks(device) + train_eval_checks(device)
    lines = [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
    name = "gpu_checks" + ("" if device.type == "cpu" else f"_{slug(device_label(device))}")
    md = write_results(args.results, name, f"Mixed-precision checks on {device_label(device)}", "\n".join(lines),
                       [{"check": text, "passed": ok} for text, ok in checks], command_line(argv, "gpu_checks"))
    print(md.read_text())
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
