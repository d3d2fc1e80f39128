"""Optional compiled dependencies: whether they can be imported."""
from __future__ import annotations

__all__ = ["has_faiss", "has_torch_cluster"]


def has_faiss() -> bool:
    """Whether FAISS (``faiss-cpu``) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def has_torch_cluster() -> bool:
    """Whether the ``torch-cluster`` extension can be imported."""
    try:
        import torch_cluster  # noqa: F401
    except (ImportError, OSError):
        return False
    return True
