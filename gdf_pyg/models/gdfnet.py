r"""GDF-Net: backbone -> region nodes -> graph aggregation -> semantic hash layer."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..nn.aggregation import AggregationConfig, GraphAggregation, PooledMLP
from ..nn.backbone import BackboneConfig, FeatureBackbone, feature_shape_of
from ..nn.graph import GraphBuilder, GraphConfig
from ..nn.hash import HASH_INPUTS, HashHead
from ..nn.nodes import NodesConfig, make_nodes
from ..presets import load_preset_dict
from .hub import CONFIG_FILE, WEIGHTS_FILE, PretrainedFormatError, check_weights, read_pretrained, resolve_pretrained, write_pretrained
from ..utils.checks import ConfigError, choice, require
from ..utils.codes import binarize
from ..utils.config_io import apply_overrides, from_dict, load_yaml, to_dict

log = logging.getLogger(__name__)

__all__ = ["GDFNet", "GDFNetConfig", "GDFOutput", "RegionGraphEncoder", "SharedEncoderGDFNet", "similarity_bits_of"]


@dataclass
class GDFNetConfig:
    """Everything that defines a :class:`GDFNet`.

    ``head`` is ``"gdf"`` (region nodes, graph aggregation, fused with the global branch),
    ``"global"`` (global average pooling only: the no-graph baseline with the same hash layer)
    or ``"mlp"`` (the aggregation's layers on the pooled feature: the capacity control).
    ``hash_hidden``, ``hash_dropout``, ``hash_input`` (``"features"``, or ``"posterior"``: the
    hash layer reads a class classifier's posterior) and ``hash_posterior_scale`` shape the
    :class:`~gdf_pyg.nn.hash.HashHead`. With ``hash_similarity_min_bits`` :math:`m > 0` every bit of a
    code of at least :math:`m` bits also keeps the backbone's similarities (``similarity_bits``,
    trained by ``loss.similarity``), for classes never trained on; shorter codes, which have no
    bits to spare, stay class codes. 0: no code does. With ``hash_similarity_detached`` the heads of
    a :class:`SharedEncoderGDFNet` whose codes keep the backbone's similarities read the encoder's
    features detached: their losses train those heads alone, and the shared encoder (backbone
    included) learns from the class-code heads only. A single :class:`GDFNet`'s forward is the same
    either way.
    """

    head: str = "gdf"
    bits: int = 32
    num_classes: int = 200
    img_size: int = 448
    fuse_global: bool = True
    hash_dropout: float = 0.0
    hash_hidden: int = 0
    hash_input: str = "features"
    hash_posterior_scale: float = 3.0
    hash_similarity_min_bits: int = 0
    hash_similarity_detached: bool = False
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    nodes: NodesConfig = field(default_factory=NodesConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)

    def validate(self, prefix: str = "model") -> None:
        choice(self.head, ("gdf", "global", "mlp"), f"{prefix}.head")
        require(self.bits >= 1, f"{prefix}.bits", f"must be a positive number of bits, got {self.bits}")
        require(self.num_classes >= 1, f"{prefix}.num_classes", f"must be >= 1, got {self.num_classes}")
        require(self.img_size >= 16, f"{prefix}.img_size", f"must be >= 16 pixels, got {self.img_size}")
        require(0.0 <= self.hash_dropout < 1.0, f"{prefix}.hash_dropout", f"must be in [0, 1), got {self.hash_dropout}")
        require(self.hash_hidden >= 0, f"{prefix}.hash_hidden",
                f"must be >= 0 channels (0: a linear hash layer), got {self.hash_hidden}")
        choice(self.hash_input, HASH_INPUTS, f"{prefix}.hash_input")
        require(self.hash_posterior_scale > 0, f"{prefix}.hash_posterior_scale",
                f"must be > 0, got {self.hash_posterior_scale}")
        require(self.hash_similarity_min_bits >= 0, f"{prefix}.hash_similarity_min_bits",
                f"must be >= 0 bits (0: no code keeps the backbone's similarities), got {self.hash_similarity_min_bits}")
        require(not self.hash_similarity_detached or self.hash_similarity_min_bits > 0,
                f"{prefix}.hash_similarity_detached", f"detaches the heads that keep the backbone's similarities; "
                f"it needs {prefix}.hash_similarity_min_bits > 0 (no code keeps them with 0)")
        self.backbone.validate(f"{prefix}.backbone")
        self.nodes.validate(f"{prefix}.nodes")
        self.graph.validate(f"{prefix}.graph")
        self.aggregation.validate(f"{prefix}.aggregation")
        if self.head == "gdf" and self.graph.method == "grid":
            require(self.nodes.kind == "spatial", f"{prefix}.graph.method",
                    "'grid' needs spatial nodes (model.nodes.kind=spatial)")

    def check_nodes(self, nodes_per_graph: int, prefix: str = "model") -> None:
        """Checks the kNN size against the node count known once the backbone is built."""
        if self.head != "gdf" or self.graph.method not in ("knn", "dynamic", "spatial_knn"):
            return
        limit = nodes_per_graph if self.graph.loop else nodes_per_graph - 1
        source = (f"{prefix}.nodes.num_parts={self.nodes.num_parts}" if self.nodes.kind == "parts"
                  else f"spatial nodes at {prefix}.img_size={self.img_size}, {prefix}.nodes.grid_size={self.nodes.grid_size}")
        require(self.graph.k <= limit, f"{prefix}.graph.k",
                f"k={self.graph.k} must be below the {nodes_per_graph} nodes per image ({source})")

    def check_feature_map(self, prefix: str = "model") -> None:
        """:meth:`check_nodes` before any network is built: the backbone's feature-map size comes
        from its shapes alone (:func:`~gdf_pyg.nn.backbone.feature_shape_of`)."""
        if self.head != "gdf":
            return
        _, (h, w) = feature_shape_of(self.backbone.name, self.backbone.out_index, self.img_size)
        grid = self.nodes.grid_size
        nodes = self.nodes.num_parts if self.nodes.kind == "parts" else (grid * grid if grid else h * w)
        self.check_nodes(nodes, prefix)

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


def similarity_bits_of(config: GDFNetConfig, bits: int) -> int:
    """How many bits of a ``bits``-bit code keep the backbone's similarities: all of them from
    ``config.hash_similarity_min_bits`` bits on, else none."""
    m = config.hash_similarity_min_bits
    return bits if m and bits >= m else 0


class GDFOutput(NamedTuple):
    """What :meth:`GDFNet.forward` returns.

    Attributes:
        codes: tanh-relaxed hash codes :math:`(B, K)` in :math:`(-1, 1)`.
        logits: class scores computed from the codes :math:`(B, C)`.
        features: the fused image features fed to the hash layer :math:`(B, D)`.
        class_logits: with ``hash_input="posterior"``, the scores of the class classifier whose
            posterior the hash layer reads :math:`(B, C)`; otherwise ``None``.
        pooled: the backbone's globally pooled map :math:`(B, C_{map})`, what the backbone alone
            says of the image (the teacher of ``loss.similarity``).
    """

    codes: Tensor
    logits: Tensor
    features: Tensor
    class_logits: Optional[Tensor] = None
    pooled: Optional[Tensor] = None


class RegionGraphEncoder(nn.Module):
    r"""Everything between the backbone and the hash layer: feature map to image features.

    ``head="gdf"``: region nodes, graph aggregation and (``fuse_global``) concatenation with
    the globally average-pooled map; ``head="global"``: the pooled map alone; ``head="mlp"``:
    the aggregation's layers on the pooled map (:class:`~gdf_pyg.nn.aggregation.PooledMLP`, the
    capacity control), fused with it like the graph branch.

    Shapes:
        - **input:** feature map :math:`(B, C, H, W)`
        - **output:** image features :math:`(B, D)`, :math:`D` = :attr:`out_channels`
    """

    def __init__(self, config: GDFNetConfig, channels: int, feature_size: Tuple[int, int]) -> None:
        super().__init__()
        self.fuse_global = config.fuse_global
        self.nodes: Optional[nn.Module] = None
        self.aggregation: Optional[GraphAggregation] = None
        self.mlp: Optional[PooledMLP] = None
        if config.head == "mlp":
            ac = config.aggregation
            self.mlp = PooledMLP(channels, ac.hidden_channels, ac.num_layers, norm=ac.norm, act=ac.act,
                                 dropout=ac.dropout, residual=ac.residual)
            self.out_channels = self.mlp.out_channels + (channels if self.fuse_global else 0)
        elif config.head == "gdf":
            nc, ac = config.nodes, config.aggregation
            self.nodes = make_nodes(nc, channels)
            config.check_nodes(self.nodes.num_nodes(feature_size))
            self.aggregation = GraphAggregation(
                channels, ac.hidden_channels, ac.num_layers, conv=ac.conv, graph=GraphBuilder.from_config(config.graph),
                norm=ac.norm, act=ac.act, dropout=ac.dropout, residual=ac.residual, readout=ac.readout,
                conv_kwargs={"heads": ac.heads} if ac.conv == "gat" else None,
            )
            self.out_channels = self.aggregation.out_channels + (channels if self.fuse_global else 0)
        else:
            self.out_channels = channels

    def forward(self, fmap: Tensor) -> Tensor:
        pooled = fmap.mean(dim=(2, 3))
        if self.mlp is not None:
            branch = self.mlp(pooled)
        elif self.aggregation is not None:
            nodes = self.nodes(fmap)
            branch, _ = self.aggregation(nodes.x, nodes.batch, nodes.pos, nodes.grid_size, nodes.num_graphs,
                                         nodes.nodes_per_graph)
        else:
            return pooled
        return torch.cat([branch, pooled], dim=1) if self.fuse_global else branch


class GDFNet(nn.Module):
    r"""Graph-based Discriminative Features network for fine-grained hashing
    (Sun, Lang, Xu, Liu, Zhou, Signal Processing: Image Communication 110, 2022).

    .. code-block:: text

        images -> backbone stage -> feature map F (B, C, H, W)
            -> region nodes (cells or attention parts) -> graph (kNN, grid, ...)
            -> message passing (GraphAggregation) -> readout g (B, D_g)
            -> [g || GAP(F)] -> hash layer -> codes h (B, K) -> classifier (B, C_cls)

    With ``head="global"`` the graph branch is skipped: ``GAP(F)`` feeds the same hash
    head (the no-graph baseline).

    Args:
        config (GDFNetConfig): the model's configuration; validated here.

    Shapes:
        - **input:** images :math:`(B, 3, S, S)` normalised with :attr:`mean` / :attr:`std`
        - **output:** :class:`GDFOutput` (codes :math:`(B, K)`, logits, features)
    """

    def __init__(self, config: Optional[GDFNetConfig] = None) -> None:
        super().__init__()
        config = config or GDFNetConfig()
        config.validate()
        self.config = config
        bb = config.backbone
        self.backbone = FeatureBackbone(bb.name, pretrained=bb.pretrained, weights_file=bb.weights_file,
                                        out_index=bb.out_index)
        self.feature_size = self.backbone.feature_size(config.img_size)
        self.encoder = RegionGraphEncoder(config, self.backbone.channels, self.feature_size)
        self.feature_dim = self.encoder.out_channels
        self.head = self.hash_head(config.bits)

    def hash_head(self, bits: int) -> HashHead:
        """A hash layer of ``bits`` bits on the encoder's features, as the config asks."""
        c = self.config
        return HashHead(self.feature_dim, bits, c.num_classes, c.hash_dropout, c.hash_hidden, c.hash_input,
                        c.hash_posterior_scale, similarity_bits_of(c, bits))

    @property
    def aggregation(self) -> Optional[GraphAggregation]:
        return self.encoder.aggregation

    @property
    def image_config(self) -> Dict[str, Any]:
        """timm's data config of the backbone at ``config.img_size``: interpolation, crop
        fraction, mean and std of the input transform."""
        return self.backbone.image_config(self.config.img_size)

    @property
    def mean(self) -> Tuple[float, ...]:
        return tuple(self.image_config["mean"])

    @property
    def std(self) -> Tuple[float, ...]:
        return tuple(self.image_config["std"])

    @property
    def bits(self) -> int:
        return self.config.bits

    def head_modules(self) -> nn.ModuleList:
        """Everything after the backbone (trained alone in frozen-backbone mode)."""
        return nn.ModuleList([self.encoder, self.head])

    def hash_heads(self) -> List[HashHead]:
        """The hash head(s): one, or one per code length of a shared encoder."""
        return [self.head]

    def forward_features(self, images: Tensor) -> Tensor:
        """Backbone feature map :math:`(B, C, H, W)`."""
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return self.backbone(images)

    def forward_head(self, fmap: Tensor) -> GDFOutput:
        """Everything after the backbone, from a (possibly cached) feature map."""
        features = self.encoder(fmap)
        codes, logits, class_logits = self.head(features)
        return GDFOutput(codes, logits, features, class_logits, fmap.mean(dim=(2, 3)))

    def forward(self, images: Tensor) -> GDFOutput:
        return self.forward_head(self.forward_features(images))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        r"""Binary codes :math:`(B, K)` in :math:`\{-1, +1\}` (evaluation mode, no gradient)."""
        return self._binary_codes(self.forward, images)

    @torch.no_grad()
    def encode_features(self, fmap: Tensor) -> Tensor:
        r"""Binary codes from cached feature maps (evaluation mode)."""
        return self._binary_codes(self.forward_head, fmap)

    def _binary_codes(self, forward, inputs: Tensor) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            return binarize(forward(inputs).codes)
        finally:
            self.train(was_training)

    # ---- the ecosystem's form: save_pretrained / from_pretrained ---------------------------
    def save_pretrained(self, folder: Union[str, Path], *, classes: Sequence[str] = (), card: str = "",
                        **info: Any) -> Path:
        """Writes this model as a self-contained folder (:mod:`gdf_pyg.models.hub`):
        ``model.safetensors``, ``config.json`` (the model's configuration, code length, ``classes``,
        the backbone's data config, and ``info``) and the model card ``README.md`` (``card``)."""
        config = {"model_config": self.config.to_dict(), "bits": self.bits, "classes": list(classes),
                  "image_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.image_config.items()},
                  **info}
        return write_pretrained(folder, self.state_dict(), config, card or f"# GDF-Net, {self.bits} bits\n")

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path], device: Union[str, torch.device] = "cpu"
                        ) -> "GDFNet":
        """The model of a folder written by :meth:`save_pretrained` (or a hub id ``user/model``,
        where a network is), in evaluation mode; nothing but that folder is read. Its
        ``config.json`` is kept as :attr:`pretrained_info`."""
        folder = resolve_pretrained(name_or_path)
        info, weights = read_pretrained(folder)
        data = dict(info["model_config"])
        # the weights are in the folder: the backbone is built without fetching or reading others
        data["backbone"] = {**data.get("backbone", {}), "pretrained": False, "weights_file": None}
        try:
            config = GDFNetConfig.from_dict(data)
        except ConfigError as err:
            raise PretrainedFormatError(f"{folder / CONFIG_FILE}: {err}") from err
        model = cls(config)
        check_weights(folder / WEIGHTS_FILE, model, weights)
        model.load_state_dict(weights)
        model.pretrained_info = info
        return model.to(device).eval()

    def __repr__(self) -> str:
        c = self.config
        graph = "none" if self.aggregation is None else f"{c.nodes.kind} nodes, {c.graph.method} graph, {c.aggregation.conv}"
        return f"{self.__class__.__name__}({self.backbone!r}, {graph}, bits={c.bits}, num_classes={c.num_classes})"


class SharedEncoderGDFNet(GDFNet):
    r"""GDF-Net with one hash head per code length on a single backbone and region-graph encoder
    (``train.shared_encoder``): every code length trains for the cost of one.

    :meth:`forward_head` returns the heads' codes and logits (and class logits, with
    ``hash_input="posterior"``) concatenated in the order of ``bits`` (codes
    :math:`(B, \sum_b K_b)`, logits :math:`(B, n_{bits} C)`);
    :meth:`single_state` is the state dict of the plain :class:`GDFNet` of one code length.

    Args:
        config (GDFNetConfig): the model's configuration (``config.bits`` is ignored).
        bits (sequence of int): the code lengths, one head each.
    """

    def __init__(self, config: GDFNetConfig, bits: Sequence[int]) -> None:
        if not bits:
            raise ValueError("bits needs at least one code length")
        super().__init__(dataclasses.replace(config, bits=int(bits[0])))
        del self.head
        self.heads = nn.ModuleDict({str(b): self.hash_head(int(b)) for b in bits})

    @property
    def all_bits(self) -> List[int]:
        return [int(b) for b in self.heads]

    def head_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.encoder, self.heads])

    def hash_heads(self) -> List[HashHead]:
        return list(self.heads.values())

    def forward_head(self, fmap: Tensor) -> GDFOutput:
        features = self.encoder(fmap)
        # hash_similarity_detached: the similarity heads' gradients stop here, off the shared encoder
        kept = features.detach() if self.config.hash_similarity_detached else features
        outputs = [head(kept if head.similarity_bits else features) for head in self.heads.values()]
        class_logits = [o.class_logits for o in outputs if o.class_logits is not None]
        return GDFOutput(torch.cat([o.codes for o in outputs], 1), torch.cat([o.logits for o in outputs], 1), features,
                         torch.cat(class_logits, 1) if class_logits else None, fmap.mean(dim=(2, 3)))

    def split(self, values: Tensor) -> Dict[int, Tensor]:
        """Concatenated codes ``(..., sum K_b)`` as one tensor per code length."""
        return dict(zip(self.all_bits, values.split(self.all_bits, dim=-1)))

    def single_state(self, bits: int, state: Optional[Mapping[str, Tensor]] = None) -> Dict[str, Tensor]:
        """The state dict of the :class:`GDFNet` of ``bits`` bits (from ``state``, one of this
        model's state dicts, or the current weights)."""
        state = self.state_dict() if state is None else state
        prefix = f"heads.{bits}."
        out = {k: v for k, v in state.items() if not k.startswith("heads.")}
        out.update({"head." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        return out
