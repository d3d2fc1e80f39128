"""A trained model for inference: the device it runs on and loading it from a checkpoint."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from ..models.gdfnet import GDFNet, GDFNetConfig
from ..models.hub import CONFIG_FILE, is_pretrained_folder, resolve_pretrained
from ..utils.checks import ConfigError
from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["load_model", "model_device", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def model_device(name: str | torch.device, state: Dict[str, Any]) -> torch.device:
    """The device to run a checkpoint's model on: ``name``, or for ``"auto"`` the kind of device
    the run trained on (recorded in the checkpoint) where this machine has one, so that codes
    equal training's; a GPU-trained model on a machine without one runs on the CPU, with a warning
    that its codes may differ from training's by float rounding."""
    if str(name) != "auto":
        return torch.device(name)
    trained = state.get("device", "cpu")
    if trained == "cuda" and not torch.cuda.is_available():
        log.warning("the model was trained on a GPU and no GPU is available: encoding on the CPU, where codes may "
                    "differ from training's by float rounding")
        return torch.device("cpu")
    return torch.device(trained)


def _load_pretrained(path: Path | str, device: str | torch.device) -> Tuple[GDFNet, Dict[str, Any]]:
    """An exported model folder (or hub id) and its ``config.json``, laid out as a checkpoint's data."""
    folder = resolve_pretrained(path)
    info = json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
    model = GDFNet.from_pretrained(folder, model_device(device, info))
    state = {"kind": "gdf-pyg-pretrained", "model_config": model.pretrained_info["model_config"],
             "config": model.pretrained_info.get("train_config", {}), "classes": model.pretrained_info["classes"],
             "bits": model.bits, "device": model.pretrained_info.get("device", "cpu")}
    return model, state


def load_model(path: Path | str, device: str | torch.device = "auto") -> Tuple[GDFNet, Dict[str, Any]]:
    """A trained model from a checkpoint (``best.pt`` or ``last.pt``) or an exported model folder
    (:mod:`gdf_pyg.models.hub`; or a hub id ``user/model``), in evaluation mode, and the
    checkpoint's data; on ``device`` (``"auto"``: :func:`model_device`).

    The backbone is rebuilt without downloading: its weights come from the checkpoint.
    """
    if is_pretrained_folder(path) or (not Path(path).exists() and str(path).count("/") == 1):
        return _load_pretrained(path, device)
    state = load_checkpoint(path)
    device = model_device(device, state)
    if "model_config" not in state:
        raise ConfigError(f"{path}: not a gdf-pyg model checkpoint (no model_config)")
    mcfg = GDFNetConfig.from_dict({**state["model_config"],
                                   "backbone": {**state["model_config"]["backbone"], "pretrained": False,
                                                "weights_file": None}})
    model = GDFNet(mcfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
