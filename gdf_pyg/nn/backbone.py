"""timm backbones: creation with hub or local weights, and one feature stage as output."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import timm
from timm.data import resolve_data_config
import torch
from torch import Tensor, nn

from ..utils.checks import require

log = logging.getLogger(__name__)

__all__ = ["BackboneConfig", "FeatureBackbone", "WeightsUnavailableError", "create_timm_model", "feature_shape_of",
           "image_config_of", "num_stages_of"]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class _DropUnusedHeadWeights(logging.Filter):
    """Hides timm's note that a feature extractor leaves the classifier's weights unused
    (expected when cutting the head off); missing weights are still reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected keys")


@dataclass
class BackboneConfig:
    """The timm backbone and the feature stage the nodes come from."""

    name: str = "resnet50"
    pretrained: bool = True
    weights_file: Optional[str] = None
    out_index: int = -1

    def validate(self, prefix: str = "model.backbone") -> None:
        require(timm.is_model(self.name), f"{prefix}.name", f"{self.name!r} is not a timm model (see timm.list_models())")
        if self.weights_file is not None:
            require(Path(self.weights_file).expanduser().is_file(), f"{prefix}.weights_file",
                    f"{self.weights_file!r} does not exist")


def image_config_of(name: str, img_size: int) -> Dict[str, Any]:
    """timm's data config (interpolation, crop, mean, std) of the weights of backbone ``name`` at
    ``img_size`` pixels, read from timm's registry of pretrained configurations: the transforms
    of a run without building (or loading) the network; the same as
    :meth:`FeatureBackbone.image_config`."""
    pretrained = timm.models.get_pretrained_cfg(name)
    return resolve_data_config({"input_size": (3, img_size, img_size)},
                               pretrained_cfg=pretrained.to_dict() if pretrained is not None else {})


def feature_shape_of(name: str, out_index: int, img_size: int) -> Tuple[int, Tuple[int, int]]:
    """Channels and spatial size of backbone ``name``'s feature stage ``out_index`` for square
    ``img_size`` inputs, worked out on PyTorch's meta device: no weights are made or read and
    nothing is computed, only shapes."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, features_only=True, out_indices=(out_index,))
        fmap = model(torch.zeros(1, 3, img_size, img_size))[-1]
    return int(model.feature_info.channels()[-1]), (int(fmap.shape[-2]), int(fmap.shape[-1]))


def num_stages_of(name: str) -> int:
    """The feature stages (timm's ``feature_info``) of backbone ``name``, read on PyTorch's meta
    device: nothing is made, read or computed."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, features_only=True)
    return len(model.feature_info.info)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could be read neither from a local file nor from timm's hub."""


def create_timm_model(
    name: str,
    *,
    pretrained: bool = True,
    weights_file: Optional[str | os.PathLike] = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with weights from a local file or, failing that, timm's hub.

    Args:
        name: a timm architecture, e.g. ``"resnet50"`` or ``"tf_efficientnet_lite0"``.
        pretrained: load pretrained weights. With ``weights_file`` they come from that file;
            otherwise from timm's hub (needs a network or a filled cache).
        weights_file: a ``.safetensors`` file or a ``torch.save``'d state dict (loaded with
            ``weights_only=True``) holding the weights of ``name``.
        **kwargs: passed on to ``timm.create_model`` (``features_only``, ``out_indices``, ...).

    Raises:
        FileNotFoundError: ``weights_file`` does not exist.
        WeightsUnavailableError: the hub could not be reached and no local file was given.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for the available names")
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights_file {str(path)!r} does not exist (expected a .safetensors file or a state dict)")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ValueError(f"weights_file {str(path)!r}: expected one of {WEIGHT_SUFFIXES}")
        log.info("loading %s weights from %s", name, path)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # network, cache and hub errors all surface differently
        raise WeightsUnavailableError(
            f"could not fetch pretrained weights for {name!r} from timm's hub ({type(err).__name__}: {err}). "
            f"Download them where a network is available and pass weights_file=PATH "
            f"(a .safetensors file or a state dict), or set pretrained=False."
        ) from err


class FeatureBackbone(nn.Module):
    r"""One feature stage of a timm model, for region nodes.

    Channels and stride are read from timm's ``feature_info``; the input transform
    (interpolation, crop, normalisation) from the model's ``pretrained_cfg``.

    Args:
        name (str): timm architecture.
        pretrained (bool): load pretrained weights (see :func:`create_timm_model`).
            (default: :obj:`True`)
        weights_file (str, optional): local weights. (default: :obj:`None`)
        out_index (int): feature stage, as timm's ``out_indices`` (negative counts from the
            deepest). (default: :obj:`-1`)

    Shapes:
        - **input:** images :math:`(B, 3, H, W)`: uint8 pixels (normalised here with the weights'
          mean and std), or floats already normalised
        - **output:** feature map :math:`(B, C, \lceil H / r \rceil, \lceil W / r \rceil)`
          with :math:`C` = :attr:`channels`, :math:`r` = :attr:`reduction`
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool = True,
        weights_file: Optional[str] = None,
        out_index: int = -1,
    ) -> None:
        super().__init__()
        self.name = name
        self.out_index = out_index
        builder_log = logging.getLogger("timm.models._builder")
        quiet = _DropUnusedHeadWeights()
        builder_log.addFilter(quiet)
        try:
            self.model = create_timm_model(
                name, pretrained=pretrained, weights_file=weights_file, features_only=True, out_indices=(out_index,)
            )
        finally:
            builder_log.removeFilter(quiet)
        self.model.to(memory_format=torch.channels_last)
        self.frozen_stages = 0
        self._frozen: Tuple[nn.Module, ...] = ()
        info = self.model.feature_info
        self.channels: int = int(info.channels()[-1])
        self.reduction: int = int(info.reduction()[-1])
        # Input size, interpolation, crop, mean and std the weights were trained with; the image
        # transforms are built from it (gdf_pyg.data.transforms).
        self.pretrained_cfg: Dict[str, Any] = dict(self.model.pretrained_cfg or {})
        norm = resolve_data_config({}, pretrained_cfg=self.pretrained_cfg)
        # uint8 pixels are normalised here, batch-wise: (x / 255 - mean) / std = x * scale + shift.
        scale = 1.0 / (255.0 * torch.tensor(norm["std"]))
        self.register_buffer("pixel_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_shift", (-torch.tensor(norm["mean"]) / torch.tensor(norm["std"])).view(1, 3, 1, 1),
                             persistent=False)

    def image_config(self, img_size: int) -> Dict[str, Any]:
        """timm's data config (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
        ``crop_mode``) of this backbone's weights, at ``img_size`` pixels."""
        return resolve_data_config({"input_size": (3, img_size, img_size)}, pretrained_cfg=self.pretrained_cfg)

    def feature_size(self, img_size: int) -> Tuple[int, int]:
        """Spatial size of the feature map for square ``img_size`` inputs."""
        with torch.no_grad():
            was_training = self.training
            self.eval()
            h, w = self.model(torch.zeros(1, 3, img_size, img_size))[-1].shape[-2:]
            self.train(was_training)
        return int(h), int(w)

    @property
    def num_stages(self) -> int:
        """The feature stages of the timm model (its ``feature_info``), from the input."""
        return len(self.model.feature_info.info)

    def freeze_stages(self, num_stages: int) -> int:
        """Keeps the weights and batch statistics of the first ``num_stages`` feature stages (and
        the stem before them) at their pretrained values while the rest trains; 0 frees them all.

        The early stages run at the highest resolutions and hold generic filters: not training
        them skips their backward pass (about 1.6x the training images/s of EfficientNet-Lite0 at
        224 px on a 2-core CPU with 3 of its 5 stages frozen). Returns the number of frozen parameters.
        """
        if not 0 <= num_stages <= self.num_stages:
            raise ValueError(f"frozen_stages must be in [0, {self.num_stages}] (the feature stages of "
                             f"{self.name!r}), got {num_stages}")
        self.requires_grad_(True)
        frozen: List[nn.Module] = []
        if num_stages:
            # Modules come in pre-order, so everything up to the boundary stage's last descendant
            # is the stem and the stages before it; the boundary's ancestors (e.g. ``blocks``) also
            # hold later stages and stay out.
            boundary = self.model.feature_info.info[num_stages - 1]["module"]
            modules = list(self.model.named_modules())
            last = max(i for i, (n, _) in enumerate(modules) if n == boundary or n.startswith(boundary + "."))
            tops: List[str] = []  # the outermost modules in that range
            for name, module in modules[1:last + 1]:
                if not boundary.startswith(name + ".") and not any(name.startswith(t + ".") for t in tops):
                    tops.append(name)
                    frozen.append(module.requires_grad_(False))
        self.frozen_stages, self._frozen = num_stages, tuple(frozen)
        self.train(self.training)
        return sum(p.numel() for m in frozen for p in m.parameters())

    def train(self, mode: bool = True) -> "FeatureBackbone":
        super().train(mode)
        for module in self._frozen:  # frozen stages keep their pretrained batch statistics
            module.eval()
        return self

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 pixels to the normalised float input of the weights (float images pass as they are)."""
        if images.dtype != torch.uint8:
            return images
        return torch.addcmul(self.pixel_shift, images.float(), self.pixel_scale)

    def forward(self, images: Tensor) -> Tensor:
        # channels-last runs the convolutions (depthwise ones above all) markedly faster on CPU;
        # batches of stack_images already are, so this copies nothing then.
        return self.model(self.normalize(images).contiguous(memory_format=torch.channels_last))[-1]

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.name!r}, out_index={self.out_index}, "
            f"channels={self.channels}, reduction={self.reduction}"
            + (f", frozen_stages={self.frozen_stages})" if self.frozen_stages else ")")
        )
