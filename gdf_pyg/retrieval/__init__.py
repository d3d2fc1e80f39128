"""Retrieval: metrics over Hamming ranking (:mod:`.metrics`), packed-bit indexes (:mod:`.index`),
and encoding, indexing and querying image collections with a trained model (:mod:`.search`).

Importing :mod:`.metrics` or :mod:`.index` loads neither timm, torchvision nor PyTorch
Geometric; :mod:`.search` (which needs the model) is imported on first use.
"""
