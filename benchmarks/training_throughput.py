"""Benchmark 4: training throughput of GDF-Net against the bare backbone.

At the same backbone, image size and batch: images/s of a full training step (forward,
backward, AdamW step) of the bare backbone with a linear classifier on globally pooled
features, and of GDF-Net (region graph + hash head + its losses). It also times the graph and
hash head alone, forward and backward, on the backbone's feature map, as a fraction of the
backbone's own forward and backward.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from gdf_pyg import GDFNet, GDFNetConfig
from gdf_pyg.engine.amp import autocast
from gdf_pyg.nn.losses import GDFLoss

from .common import (
    barh_plot, base_parser, command_line, device_label, markdown_table, peak_memory_mb, resolve, slug, time_call,
    write_results,
)

FULL = [
    # backbone, image size, batch, GDF variants (overrides of the model config)
    ("resnet50", 224, 8, {"spatial 7x7, dynamic 8-NN": {}, "32 parts, dynamic 3-NN": {"nodes": {"kind": "parts"},
                                                                                       "graph": {"k": 3}}}),
    ("tf_efficientnet_lite0", 224, 32, {"spatial 7x7, dynamic 8-NN": {}}),
]
QUICK = [("test_efficientnet", 64, 4, {"spatial 2x2, dynamic 3-NN": {"graph": {"k": 3}}})]
# On a card: the paper's setting (ResNet-50 at 448 px) at a GPU batch size.
PAPER_HEAD = {"nodes": {"kind": "parts", "num_parts": 32}, "graph": {"k": 3}, "aggregation": {"hidden_channels": 512}}
GPU = [("resnet50", 448, 32, {"paper: 32 parts, dynamic 3-NN": PAPER_HEAD, "spatial 14x14, dynamic 8-NN": {}})]


def model_config(backbone: str, size: int, overrides: Dict[str, Dict]) -> GDFNetConfig:
    data = {"bits": 48, "num_classes": 200, "img_size": size, "backbone": {"name": backbone, "pretrained": False},
            "nodes": {"kind": "spatial"}, "graph": {"method": "dynamic", "k": 8}, "aggregation": {"hidden_channels": 256}}
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values}
    return GDFNetConfig.from_dict(data)


def measure(backbone: str, size: int, batch: int, variants: Dict[str, Dict], device: torch.device,
            repeats: int, amp: bool = False) -> List[Dict[str, object]]:
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 200, (batch,), device=device)
    rows = []
    first = GDFNet(model_config(backbone, size, next(iter(variants.values())))).to(device).train()
    bb = first.backbone
    classifier = nn.Linear(bb.channels, 200).to(device)
    bare_opt = torch.optim.AdamW([*bb.parameters(), *classifier.parameters()], lr=1e-4)

    def backbone_fwd_bwd():
        bb.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = bb(images)
        out.float().mean().backward()

    def bare_step():
        bare_opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = classifier(bb(images).mean(dim=(2, 3)))
        nn.functional.cross_entropy(logits.float(), labels).backward()
        bare_opt.step()

    t_bb = time_call(backbone_fwd_bwd, device, repeats)
    t_bare = time_call(bare_step, device, repeats)
    rows.append({"backbone": backbone, "image px": size, "batch": batch, "model": "bare backbone + linear",
                 "step ms": t_bare, "images/s": batch * 1e3 / t_bare, "peak MB": peak_memory_mb(bare_step, device),
                 "head fwd+bwd ms": "", "head / backbone fwd+bwd": ""})
    loss_fn = GDFLoss()
    for name, overrides in variants.items():
        model = GDFNet(model_config(backbone, size, overrides)).to(device).train()
        model.backbone.load_state_dict(bb.state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        with torch.no_grad():
            fmap = model.forward_features(images)

        def head_fwd_bwd():
            model.zero_grad(set_to_none=True)
            with autocast(device, amp):
                out = model.forward_head(fmap.detach().requires_grad_())
            loss_fn(out.codes.float(), out.logits.float(), labels)["loss"].backward()

        def gdf_step():
            opt.zero_grad(set_to_none=True)
            with autocast(device, amp):
                out = model(images)
            loss_fn(out.codes.float(), out.logits.float(), labels)["loss"].backward()
            opt.step()

        t_head = time_call(head_fwd_bwd, device, repeats)
        t_step = time_call(gdf_step, device, repeats)
        rows.append({"backbone": backbone, "image px": size, "batch": batch, "model": f"GDF-Net, {name}",
                     "step ms": t_step, "images/s": batch * 1e3 / t_step, "peak MB": peak_memory_mb(gdf_step, device),
                     "head fwd+bwd ms": t_head, "head / backbone fwd+bwd": f"{100 * t_head / t_bb:.1f}%"})
    rows[0]["head fwd+bwd ms"] = f"backbone fwd+bwd: {t_bb:.0f}"
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser(__doc__, "training_throughput")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (the losses stay in float32)")
    args = parser.parse_args(argv)
    device = resolve(args.device)
    torch.manual_seed(0)
    rows: List[Dict[str, object]] = []
    for backbone, size, batch, variants in (QUICK if args.quick else GPU if device.type == "cuda" else FULL):
        rows += measure(backbone, size, batch, variants, device, repeats=2 if args.quick else 5, amp=args.amp)
        print(f"done: {backbone}", flush=True)
    label = device_label(device)
    precision = "bfloat16 autocast, losses in float32" if args.amp else "float32"
    body = (f"Device: {label}; {precision}. Random weights (speed does not depend on them); 48-bit codes, 200 "
            "classes, hidden width 256 (512 for the paper head). Step = forward + backward + AdamW step; median of "
            "repeats. Peak MB: memory growth during one step (CUDA allocator on a card, malloc on the CPU).\n\n"
            + markdown_table(rows, ["backbone", "image px", "batch", "model", "step ms", "images/s", "peak MB",
                                    "head fwd+bwd ms", "head / backbone fwd+bwd"]))
    name = ("training_throughput" + ("_quick" if args.quick else "") + ("_amp" if args.amp else "")
            + ("" if device.type == "cpu" else "_" + slug(label)))
    md = write_results(args.results, name, "Training throughput", body, rows, command_line(argv, "training_throughput"))
    barh_plot([f"{r['backbone']} {r['image px']}px b{r['batch']}: {r['model']}" for r in rows],
              [r["images/s"] for r in rows], "training images/s", args.results / f"{name}.png", label)
    print(body)
    print(f"\nwritten: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
