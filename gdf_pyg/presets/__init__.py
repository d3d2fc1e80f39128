"""The shipped configurations: ``paper`` (the paper's GPU setting), ``cpu``, ``finetune`` (the
cpu preset with its backbone trained) and ``demo``.

A preset may start from another (``extends: NAME``): its keys are merged over that preset's."""
from __future__ import annotations

from importlib import resources
from typing import Any, Dict

import yaml

from ..utils.checks import ConfigError
from ..utils.config_io import merge

__all__ = ["PRESETS", "load_preset_dict"]

PRESETS = ("paper", "cpu", "finetune", "demo")


def load_preset_dict(name: str) -> Dict[str, Any]:
    """The plain data of the preset ``name`` (``gdf_pyg/presets/<name>.yaml``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")
    data = yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text()) or {}
    base = data.pop("extends", None)
    return merge(load_preset_dict(base), data) if base else data
