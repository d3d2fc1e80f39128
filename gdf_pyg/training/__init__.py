"""Training: a run's configuration and data, the batches, the trainer and its moving average, the
shared-encoder trainer, whole runs and their reports; :func:`train` runs a configuration.

Names are imported on first use (as every package of gdf-pyg exports them).
"""
from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "EvalConfig": ".config", "OptimConfig": ".config", "TrainConfig": ".config", "TrainSection": ".config",
    "Trainer": ".trainer", "TrainingDivergedError": ".trainer", "WeightAverage": ".ema",
    "SharedEncoderTrainer": ".shared", "train": ".run", "train_bits": ".run", "train_shared": ".run",
})
