"""The floor beneath training and retrieval: what running a model takes, whoever runs it.

Checkpoints and the generators' state (:mod:`.checkpoint`), loading a trained model and choosing
its device (:mod:`.inference`), encoding images or cached maps into codes or features, and the
feature cache (:mod:`.encoding`), processes of a multi-process job (:mod:`.distributed`) and
precision (:mod:`.amp`). Names are imported on first use.
"""
from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint", "CheckpointError": ".checkpoint",
    "seed_everything": ".checkpoint", "load_model": ".inference", "resolve_device": ".inference",
    "EncodedSet": ".encoding", "ImageEncoder": ".encoding", "encode_dataset": ".encoding",
    "encode_cached": ".encoding", "DistContext": ".distributed", "main_first": ".distributed", "autocast": ".amp",
})
