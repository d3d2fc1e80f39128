"""The shipped configurations: ``paper`` (the paper's GPU setting), ``cpu`` and ``demo``."""
from __future__ import annotations

from importlib import resources
from typing import Any, Dict

import yaml

from ..utils.checks import ConfigError

__all__ = ["PRESETS", "load_preset_dict"]

PRESETS = ("paper", "cpu", "demo")


def load_preset_dict(name: str) -> Dict[str, Any]:
    """The plain data of the preset ``name`` (``gdf_pyg/presets/<name>.yaml``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")
    return yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text()) or {}
