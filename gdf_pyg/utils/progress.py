"""The progress-bar hook: the library takes a wrapper from its caller and never draws bars itself."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

__all__ = ["Progress", "no_progress"]

# Called as progress(iterable, desc=..., total=...) and iterated; the CLI passes tqdm.
Progress = Callable[..., Iterable]


def no_progress(iterable: Iterable, desc: str = "", total: Optional[int] = None, **_: Any) -> Iterable:
    """The default progress wrapper: none."""
    return iterable
