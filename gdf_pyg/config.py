"""Typed configuration: dataclasses loaded from YAML with dotted command-line overrides.

Every section is a dataclass; :func:`from_dict` builds one from plain data, rejecting
unknown keys and wrongly typed values with the dotted key that is wrong and what was
expected, and each section's ``validate`` checks the values before any work starts.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from .data import DataConfig
from .losses import LossWeights

__all__ = [
    "AggregationConfig",
    "BackboneConfig",
    "ConfigError",
    "EvalConfig",
    "GDFNetConfig",
    "GraphConfig",
    "NodesConfig",
    "OptimConfig",
    "PRESETS",
    "TrainConfig",
    "TrainSection",
    "apply_overrides",
    "from_dict",
    "load_preset_dict",
    "load_yaml",
    "to_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _choice(value: Any, allowed: Sequence[Any], key: str) -> None:
    _require(value in allowed, key, f"{value!r} is not allowed; expected one of {list(allowed)}")


# --------------------------------------------------------------------------------------
# Generic loading.
# --------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=key)
    if origin in (list, List, tuple, Tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin in (tuple, Tuple) else items
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads "1e-4" (no dot) as a string; it is plainly meant as a number.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def from_dict(cls: Type[T], data: Optional[Mapping[str, Any]], prefix: str = "") -> T:
    """Builds dataclass ``cls`` from ``data``; missing keys take their defaults."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]!s}; allowed keys: {sorted(fields)}")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a config, for YAML and checkpoints."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Reads a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Applies ``key.sub=value`` overrides (values parsed as YAML) to a copy of ``data``."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


PRESETS = ("paper", "cpu", "demo")


def load_preset_dict(name: str) -> Dict[str, Any]:
    """The plain data of a preset shipped in ``gdf_pyg/presets``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")
    text = resources.files("gdf_pyg").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


# --------------------------------------------------------------------------------------
# Model sections.
# --------------------------------------------------------------------------------------
@dataclass
class BackboneConfig:
    """The timm backbone and the feature stage the nodes come from."""

    name: str = "resnet50"
    pretrained: bool = True
    weights_file: Optional[str] = None
    out_index: int = -1

    def validate(self, prefix: str = "model.backbone") -> None:
        import timm

        _require(timm.is_model(self.name), f"{prefix}.name", f"{self.name!r} is not a timm model (see timm.list_models())")
        if self.weights_file is not None:
            _require(Path(self.weights_file).expanduser().is_file(), f"{prefix}.weights_file",
                     f"{self.weights_file!r} does not exist")


@dataclass
class NodesConfig:
    """How regions become nodes: ``spatial`` (feature-map cells) or ``parts`` (attention)."""

    kind: str = "spatial"
    grid_size: Optional[int] = None
    num_parts: int = 32

    def validate(self, prefix: str = "model.nodes") -> None:
        _choice(self.kind, ("spatial", "parts"), f"{prefix}.kind")
        _require(self.grid_size is None or self.grid_size >= 1, f"{prefix}.grid_size",
                 f"must be a positive integer or null, got {self.grid_size}")
        _require(self.num_parts >= 1, f"{prefix}.num_parts", f"must be >= 1, got {self.num_parts}")


@dataclass
class GraphConfig:
    """The graph construction (see :data:`gdf_pyg.graph.GRAPH_METHODS`)."""

    method: str = "dynamic"
    k: int = 8
    cosine: bool = False
    loop: bool = False
    radius: float = 0.25
    max_num_neighbors: int = 32
    connectivity: int = 8
    backend: str = "auto"

    def validate(self, prefix: str = "model.graph") -> None:
        from .graph import GRAPH_METHODS, KNN_BACKENDS

        _choice(self.method, sorted(GRAPH_METHODS), f"{prefix}.method")
        _require(self.k >= 1, f"{prefix}.k", f"must be >= 1, got {self.k}")
        _require(self.radius > 0, f"{prefix}.radius", f"must be > 0, got {self.radius}")
        _require(self.max_num_neighbors >= 1, f"{prefix}.max_num_neighbors", f"must be >= 1, got {self.max_num_neighbors}")
        _choice(self.connectivity, (4, 8), f"{prefix}.connectivity")
        _choice(self.backend, KNN_BACKENDS, f"{prefix}.backend")
        _require(not (self.method == "radius" and self.backend == "faiss"), f"{prefix}.backend",
                 "'faiss' does kNN only; method 'radius' needs 'auto', 'dense' or 'torch_cluster'")


@dataclass
class AggregationConfig:
    """The message-passing stack (see :class:`gdf_pyg.aggregation.GraphAggregation`)."""

    conv: str = "edge"
    hidden_channels: int = 256
    num_layers: int = 2
    norm: str = "batch_norm"
    act: str = "leaky_relu"
    dropout: float = 0.0
    residual: bool = True
    readout: str = "mean_max"
    heads: int = 4

    def validate(self, prefix: str = "model.aggregation") -> None:
        from .aggregation import NORMS, READOUTS
        from .conv import CONVS

        _choice(self.conv, sorted(CONVS), f"{prefix}.conv")
        _require(self.hidden_channels >= 1, f"{prefix}.hidden_channels", f"must be >= 1, got {self.hidden_channels}")
        _require(self.num_layers >= 1, f"{prefix}.num_layers", f"must be >= 1, got {self.num_layers}")
        _choice(self.norm, NORMS, f"{prefix}.norm")
        _choice(self.act, ("relu", "leaky_relu", "gelu", "elu", "silu", "tanh"), f"{prefix}.act")
        _require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout}")
        _choice(self.readout, READOUTS, f"{prefix}.readout")
        _require(self.heads >= 1, f"{prefix}.heads", f"must be >= 1, got {self.heads}")
        if self.conv == "gat":
            _require(self.hidden_channels % self.heads == 0, f"{prefix}.hidden_channels",
                     f"must be divisible by heads={self.heads} for conv 'gat', got {self.hidden_channels}")


@dataclass
class GDFNetConfig:
    """Everything that defines a :class:`gdf_pyg.GDFNet`.

    ``head`` is ``"gdf"`` (region nodes, graph aggregation, fused with the global branch)
    or ``"global"`` (global average pooling only: the no-graph baseline with the same
    hash layer).
    """

    head: str = "gdf"
    bits: int = 32
    num_classes: int = 200
    img_size: int = 448
    fuse_global: bool = True
    hash_dropout: float = 0.0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    nodes: NodesConfig = field(default_factory=NodesConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)

    def validate(self, prefix: str = "model") -> None:
        _choice(self.head, ("gdf", "global"), f"{prefix}.head")
        _require(self.bits >= 1, f"{prefix}.bits", f"must be a positive number of bits, got {self.bits}")
        _require(self.num_classes >= 1, f"{prefix}.num_classes", f"must be >= 1, got {self.num_classes}")
        _require(self.img_size >= 16, f"{prefix}.img_size", f"must be >= 16 pixels, got {self.img_size}")
        _require(0.0 <= self.hash_dropout < 1.0, f"{prefix}.hash_dropout", f"must be in [0, 1), got {self.hash_dropout}")
        self.backbone.validate(f"{prefix}.backbone")
        self.nodes.validate(f"{prefix}.nodes")
        self.graph.validate(f"{prefix}.graph")
        self.aggregation.validate(f"{prefix}.aggregation")
        if self.head == "gdf" and self.graph.method in ("grid",):
            _require(self.nodes.kind == "spatial", f"{prefix}.graph.method",
                     "'grid' needs spatial nodes (model.nodes.kind=spatial)")

    def check_nodes(self, nodes_per_graph: int, prefix: str = "model") -> None:
        """Checks the kNN size against the node count known once the backbone is built."""
        if self.head != "gdf" or self.graph.method not in ("knn", "dynamic", "spatial_knn"):
            return
        limit = nodes_per_graph if self.graph.loop else nodes_per_graph - 1
        source = (f"{prefix}.nodes.num_parts={self.nodes.num_parts}" if self.nodes.kind == "parts"
                  else f"spatial nodes at {prefix}.img_size={self.img_size}, {prefix}.nodes.grid_size={self.nodes.grid_size}")
        _require(self.graph.k <= limit, f"{prefix}.graph.k",
                 f"k={self.graph.k} must be below the {nodes_per_graph} nodes per image ({source})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "model") -> "GDFNetConfig":
        cfg = from_dict(cls, data, prefix)
        cfg.validate(prefix)
        return cfg

    @classmethod
    def from_yaml(cls, path: Union[str, Path], overrides: Sequence[str] = ()) -> "GDFNetConfig":
        """Reads a model config; a file with a top-level ``model`` section (a training
        config) is read from that section."""
        data = load_yaml(path)
        if "model" in data and isinstance(data["model"], dict):
            data = data["model"]
        return cls.from_dict(apply_overrides(data, overrides))

    @classmethod
    def preset(cls, name: str, overrides: Sequence[str] = ()) -> "GDFNetConfig":
        """The model section of a shipped preset (``"paper"``, ``"cpu"``, ``"demo"``)."""
        return cls.from_dict(apply_overrides(load_preset_dict(name).get("model", {}), overrides))

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)


# --------------------------------------------------------------------------------------
# Training sections.
# --------------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    """AdamW with per-step warm-up and cosine (or step, or constant) decay."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0

    def validate(self, prefix: str = "optim") -> None:
        _require(self.epochs >= 1, f"{prefix}.epochs", f"must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 2, f"{prefix}.batch_size", f"must be >= 2 (the losses compare codes in a batch), got {self.batch_size}")
        _require(self.lr > 0, f"{prefix}.lr", f"must be > 0, got {self.lr}")
        _require(self.backbone_lr >= 0, f"{prefix}.backbone_lr", f"must be >= 0, got {self.backbone_lr}")
        _require(self.weight_decay >= 0, f"{prefix}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _choice(self.scheduler, ("cosine", "step", "none"), f"{prefix}.scheduler")
        _require(0 <= self.warmup_epochs < self.epochs, f"{prefix}.warmup_epochs",
                 f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        _require(self.grad_clip >= 0, f"{prefix}.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")


@dataclass
class TrainSection:
    """What to train and where: code lengths, frozen backbone, device, precision, seed.

    ``init_from`` names an earlier run directory whose ``bits<K>/best.pt`` weights start the
    model of each code length (e.g. fine-tune end to end after a frozen-backbone run).
    ``freeze_backbone_bn`` keeps the backbone's batch-norm statistics at their pretrained
    values while it is fine-tuned (small batches estimate them poorly).
    """

    bits: List[int] = field(default_factory=lambda: [12, 24, 32, 48])
    frozen_backbone: bool = False
    amp: bool = True
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    cache_dir: Optional[str] = None
    feature_flip: bool = True
    init_from: Optional[str] = None
    freeze_backbone_bn: bool = True

    def validate(self, prefix: str = "train") -> None:
        _require(len(self.bits) >= 1, f"{prefix}.bits", "needs at least one code length")
        for i, b in enumerate(self.bits):
            _require(b >= 1, f"{prefix}.bits[{i}]", f"must be a positive number of bits, got {b}")
        _require(len(set(self.bits)) == len(self.bits), f"{prefix}.bits", f"has repeated code lengths: {self.bits}")
        _require(self.device in ("auto", "cpu") or self.device.startswith("cuda"), f"{prefix}.device",
                 f"expected 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        _require(self.eval_every >= 1, f"{prefix}.eval_every", f"must be >= 1, got {self.eval_every}")
        if self.init_from is not None:
            run = Path(self.init_from).expanduser()
            missing = [b for b in self.bits if not (run / f"bits{b}" / "best.pt").is_file()]
            _require(not missing, f"{prefix}.init_from",
                     f"{self.init_from!r} must be a run directory with bits<K>/best.pt for every code length; "
                     f"missing for {missing}")


@dataclass
class EvalConfig:
    """Retrieval metrics reported besides mAP@all."""

    topks: List[int] = field(default_factory=lambda: [100, 1000])
    radius: int = 2

    def validate(self, prefix: str = "eval") -> None:
        for i, k in enumerate(self.topks):
            _require(k >= 1, f"{prefix}.topks[{i}]", f"must be >= 1, got {k}")
        _require(self.radius >= 0, f"{prefix}.radius", f"must be >= 0, got {self.radius}")


@dataclass
class TrainConfig:
    """A whole training run: model, data, optimiser, losses, training and evaluation."""

    model: GDFNetConfig = field(default_factory=GDFNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        self.model.validate("model")
        self.data.validate("data")
        self.optim.validate("optim")
        self.train.validate("train")
        self.eval.validate("eval")
        _require(self.loss.gamma > 0, "loss.gamma", f"must be > 0, got {self.loss.gamma}")
        for name in ("classification", "quantization", "balance", "pairwise"):
            _require(getattr(self.loss, name) >= 0, f"loss.{name}", f"must be >= 0, got {getattr(self.loss, name)}")
        _require(0.0 <= self.loss.label_smoothing < 1.0, "loss.label_smoothing",
                 f"must be in [0, 1), got {self.loss.label_smoothing}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        cfg = from_dict(cls, data)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
             preset: Optional[str] = None) -> "TrainConfig":
        """A preset and/or a YAML file (the file's keys win), then dotted overrides."""
        data: Dict[str, Any] = load_preset_dict(preset) if preset else {}
        if path is not None:
            data = _merge(data, load_yaml(path))
        return cls.from_dict(apply_overrides(data, overrides))

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)


def _merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
