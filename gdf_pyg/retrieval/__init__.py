"""Retrieval: metrics over Hamming ranking (:mod:`.metrics`), packed-bit indexes (:mod:`.index`),
evaluation of a model's codes (:mod:`.evaluation`), and encoding, indexing and querying image
collections with a trained model (:mod:`.search`).

Importing :mod:`.metrics` or :mod:`.index` loads neither timm, torchvision nor PyTorch
Geometric; names are imported on first use.
"""
from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "mean_average_precision": ".metrics", "retrieval_report": ".metrics", "HammingIndex": ".index",
    "SavedIndex": ".index", "pack_codes": ".index", "Evaluator": ".evaluation", "evaluate_codes": ".evaluation",
    "validation_map": ".evaluation", "build_index": ".search", "query_index": ".search",
})
