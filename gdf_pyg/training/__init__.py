"""Training helpers: run data, encoding and the feature cache, schedule, trainer, checkpoints,
multi-process training, reports; :func:`train` runs a whole configuration."""
from .config import EvalConfig, OptimConfig, TrainConfig, TrainSection
from .ema import WeightAverage
from .run import evaluate_codes, load_model, resolve_device, train, train_bits
from .trainer import Trainer, TrainingDivergedError

__all__ = ["EvalConfig", "OptimConfig", "TrainConfig", "TrainSection", "Trainer", "TrainingDivergedError",
           "WeightAverage", "evaluate_codes", "load_model", "resolve_device", "train", "train_bits"]
