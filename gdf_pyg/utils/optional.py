"""Optional compiled dependencies: whether they can be imported."""
from __future__ import annotations

from functools import lru_cache

__all__ = ["has_faiss", "has_torch_cluster"]


@lru_cache(maxsize=None)
def has_faiss() -> bool:
    """Whether FAISS (``faiss-cpu``) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=None)
def has_torch_cluster() -> bool:
    """Whether the ``torch-cluster`` extension can be imported."""
    try:
        import torch_cluster  # noqa: F401
    except (ImportError, OSError):
        return False
    return True
