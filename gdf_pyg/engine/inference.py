"""A trained model for inference: the device it runs on and loading it from a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from ..models.gdfnet import GDFNet, GDFNetConfig
from ..utils.checks import ConfigError
from .checkpoint import load_checkpoint

__all__ = ["load_model", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> Tuple[GDFNet, Dict[str, Any]]:
    """A trained model from a checkpoint (``best.pt`` or ``last.pt``), in evaluation mode, and the
    checkpoint's data.

    The backbone is rebuilt without downloading: its weights come from the checkpoint.
    """
    state = load_checkpoint(path)
    if "model_config" not in state:
        raise ConfigError(f"{path}: not a gdf-pyg model checkpoint (no model_config)")
    mcfg = GDFNetConfig.from_dict({**state["model_config"],
                                   "backbone": {**state["model_config"]["backbone"], "pretrained": False,
                                                "weights_file": None}})
    model = GDFNet(mcfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
