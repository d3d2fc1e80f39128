"""Trained models in the form the ecosystem shares them: a self-contained folder of
``model.safetensors`` (the weights), ``config.json`` (the model's configuration, its code length,
class names, the backbone's data config and where it came from) and ``README.md`` (the model card),
as ``huggingface_hub``'s ``save_pretrained`` / ``from_pretrained`` and timm's pretrained configs
lay them out. Such a folder loads without this package's run layout, from a path or, where a
network is, a hub repository id.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import torch
from torch import Tensor

from ..utils.checks import ConfigError

log = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "PretrainedFormatError", "WEIGHTS_FILE", "is_pretrained_folder",
           "read_pretrained", "resolve_pretrained", "write_pretrained"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMAT = "gdf-pyg"
FORMAT_VERSION = 1


class PretrainedFormatError(ConfigError):
    """A pretrained-model folder is missing a file, or holds weights or a configuration this
    version cannot read; the message names the file."""


def is_pretrained_folder(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a folder written by :func:`write_pretrained` (it holds ``config.json``)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def resolve_pretrained(name_or_path: Union[str, Path]) -> Path:
    """The local folder of ``name_or_path``: a folder as it is, or a hub repository id
    (``user/model``) downloaded with ``huggingface_hub`` (the ``hub`` extra) into its cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).count("/") != 1:
        raise PretrainedFormatError(f"{str(name_or_path)!r} is not a folder of a pretrained gdf-pyg model "
                                    f"(expected {CONFIG_FILE} and {WEIGHTS_FILE}) nor a hub id 'user/model'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise PretrainedFormatError(f"{str(name_or_path)!r} is no local folder; loading from the hub needs the hub "
                                    f"extra (pip install 'gdf-pyg[hub]')") from err
    return Path(snapshot_download(str(name_or_path), allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]))


def write_pretrained(folder: Union[str, Path], state: Mapping[str, Tensor], config: Dict[str, Any],
                     card: str) -> Path:
    """Writes the weights ``state``, the ``config`` (format and version added) and the model card."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / WEIGHTS_FILE),
              metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **config},
                                                 indent=1))
    (folder / CARD_FILE).write_text(card)
    return folder


def read_pretrained(folder: Union[str, Path]) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    """The configuration and the weights of a folder written by :func:`write_pretrained`."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise PretrainedFormatError(f"{path}: missing; a pretrained gdf-pyg model folder holds {CONFIG_FILE} "
                                        f"and {WEIGHTS_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise PretrainedFormatError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PretrainedFormatError(f"{config_path}: not a gdf-pyg model configuration (no \"format\": \"{FORMAT}\")")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PretrainedFormatError(f"{config_path}: format_version {version!r} is newer than this gdf-pyg reads "
                                    f"({FORMAT_VERSION}); upgrade gdf-pyg")
    for key in ("model_config", "bits", "classes"):
        if key not in config:
            raise PretrainedFormatError(f"{config_path}: lacks {key!r}")
    try:
        from safetensors.torch import load_file

        weights = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise PretrainedFormatError(f"{weights_path}: unreadable weights ({type(err).__name__}: {err})") from err
    return config, weights


def check_weights(path: Path, model: torch.nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Stops, naming ``path``, when ``weights`` do not fit ``model`` exactly."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (first {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (first {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} of another shape (first {wrong[0]}: {tuple(weights[wrong[0]].shape)} for "
                 f"{tuple(own[wrong[0]].shape)})" if wrong else ""]
        raise PretrainedFormatError(f"{path}: the weights do not match the model of {CONFIG_FILE}: "
                                    + ", ".join(p for p in parts if p))
