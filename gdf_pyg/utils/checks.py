"""Validation helpers shared by the configuration sections and the public functions.

A leaf module: it imports nothing from :mod:`gdf_pyg`, so every other module can use it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence, Type

__all__ = ["ConfigError", "check_positive_finite", "check_positive_int", "choice", "is_positive_int", "require"]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def require(condition: bool, key: str, message: str) -> None:
    """Raises :class:`ConfigError` ``"key: message"`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def choice(value: Any, allowed: Sequence[Any], key: str) -> None:
    """Raises :class:`ConfigError` unless ``value`` is one of ``allowed``."""
    require(value in allowed, key, f"{value!r} is not allowed; expected one of {list(allowed)}")


def is_positive_int(value: Any) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) of at least 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_int(value: Any, name: str, error: Type[Exception] = ValueError) -> int:
    """Returns ``value`` when it is a positive integer, else raises ``error`` naming ``name``."""
    if not is_positive_int(value):
        raise error(f"{name} must be a positive integer, got {value!r}")
    return value


def check_positive_finite(value: Any, name: str) -> float:
    """Returns ``value`` as a float when it is a positive finite number, else raises ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)
