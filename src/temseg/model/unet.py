"""The U-Net of Groschner, Choi & Scott (2021) and configurable variants.

The paper's network ("groschner2021") has encoder filters 4-8-16-32, a centre
block of 32 filters, batch normalisation after every 3x3 convolution and a
2-class softmax output. Input height and width must be multiples of
``2 ** depth`` pixels, where ``depth = len(filters)``.

Other architectures are kinds of :class:`UNetConfig` (``kind``) built by
:func:`build_unet`: "pynanofind" (:mod:`temseg.model.pynanofind`, the
published Keras network of the paper) and "residual"
(:mod:`temseg.model.residual_unet`, the HRTEM-Generalization network). Every
kind is a :class:`Network`: ``forward`` gives two-class logits whose softmax
of class 1 is the particle probability, ``probability`` gives that
probability directly.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional
from torch.nn.utils.fusion import fuse_conv_bn_eval

Kind = Literal["unet", "pynanofind", "residual"]
KINDS: tuple[Kind, ...] = ("unet", "pynanofind", "residual")

PRESETS: dict[str, dict[str, Any]] = {
    "groschner2021": {"filters": (4, 8, 16, 32), "centre": 32},
    "wide": {"filters": (8, 16, 32, 64), "centre": 64},
    # The published networks (see docs/models.md); only their layout, no weights.
    "pynanofind": {"kind": "pynanofind", "filters": (4, 8, 16, 32), "centre": 32},
    "hrtem-generalization": {"kind": "residual", "filters": (4, 8, 16, 32), "centre": 64},
}


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net; JSON-serialisable through :meth:`to_dict`."""

    filters: tuple[int, ...] = (4, 8, 16, 32)
    centre: int = 32
    batch_norm: bool = True
    in_channels: int = 1
    n_classes: int = 2
    preset: str | None = "groschner2021"
    extra: dict[str, Any] = field(default_factory=dict)
    kind: Kind = "unet"

    @property
    def depth(self) -> int:
        """Number of 2x down-sampling steps."""
        return len(self.filters)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this many pixels."""
        return 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["filters"] = list(self.filters)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "filters" in known:
            known["filters"] = tuple(int(f) for f in known["filters"])
        if known.get("kind", "unet") not in KINDS:
            raise ValueError(
                f"unknown architecture kind {known['kind']!r}; known: {', '.join(KINDS)}"
            )
        return cls(**known)

    @classmethod
    def from_preset(cls, name: str) -> UNetConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown U-Net preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(preset=name, **PRESETS[name])


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (c_in, c_out):
        layers.append(nn.Conv2d(c, c_out, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Network(nn.Module):
    """What every architecture offers the engines, the trainer and the ONNX export.

    ``config`` describes it; ``forward`` maps an (N, in_channels, H, W) batch
    to (N, 2, H, W) logits whose softmax of class 1 is the particle
    probability (the trainer's loss takes these); :meth:`probability` gives
    that probability, shape (N, 1, H, W), the graph inference runs. H and W
    are multiples of ``config.size_multiple``.
    """

    config: UNetConfig

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def folded_head_probability(features: torch.Tensor, head: nn.Conv2d) -> torch.Tensor:
    """Softmax of class 1 of ``head(features)`` for a two-class 1x1 ``head``.

    Softmax of the last of two classes equals the sigmoid of the logit
    difference, so the head is folded into one output channel (weights
    ``w[1] - w[0]``): one 1x1 convolution and an element-wise sigmoid instead
    of a 2-channel convolution and a channel softmax, which on CPU took a
    quarter of the network's time at 512 x 512.
    """
    bias = head.bias
    if head.out_channels == 2 and bias is not None:
        weight = head.weight[1:] - head.weight[:1]
        return torch.sigmoid(functional.conv2d(features, weight, bias[1:] - bias[:1]))
    return torch.softmax(head(features), dim=1)[:, -1:]


class UNet(Network):
    """U-Net returning per-class logits of shape (N, n_classes, H, W)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        bn = config.batch_norm
        self.down = nn.ModuleList()
        c_prev = config.in_channels
        for c in config.filters:
            self.down.append(_conv_block(c_prev, c, bn))
            c_prev = c
        self.pool = nn.MaxPool2d(2)
        self.centre = _conv_block(c_prev, config.centre, bn)
        self.up = nn.ModuleList()
        self.decode = nn.ModuleList()
        c_prev = config.centre
        for c in reversed(config.filters):
            self.up.append(nn.ConvTranspose2d(c_prev, c, kernel_size=2, stride=2))
            self.decode.append(_conv_block(2 * c, c, bn))
            c_prev = c
        self.head = nn.Conv2d(c_prev, config.n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last decoder block, the input of the 1x1 ``head``."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.centre(x)
        for up, block, skip in zip(self.up, self.decode, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return x

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Particle probability (softmax of the last class), shape (N, 1, H, W)."""
        return folded_head_probability(self.features(x), self.head)


class ProbabilityModel(nn.Module):
    """Wraps a :class:`Network` so that ``forward`` returns the particle probability.

    This is the graph every inference engine runs and the one exported to ONNX.
    """

    def __init__(self, unet: Network) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet.probability(x)


def build_unet(config: UNetConfig | str = "groschner2021") -> Network:
    """Build a freshly initialised network from a config or a preset name.

    The config's ``kind`` picks the architecture: "unet" (:class:`UNet`),
    "pynanofind" or "residual".
    """
    if isinstance(config, str):
        config = UNetConfig.from_preset(config)
    if config.kind == "pynanofind":
        from temseg.model.pynanofind import PyNanoFindUNet

        return PyNanoFindUNet(config)
    if config.kind == "residual":
        from temseg.model.residual_unet import ResidualUNet

        return ResidualUNet(config)
    return UNet(config)


def fold_batch_norm(unet: Network) -> Network:
    """An inference copy of ``unet`` with each batch norm folded into its convolution.

    Every :class:`~torch.nn.Sequential` in the network is searched for a
    convolution directly followed by a batch norm (architectures keep such
    pairs in one). The copy is in eval mode and computes the same function as
    ``unet.eval()`` (up to float rounding) with one convolution where there
    were a convolution and a batch norm; ``unet`` itself is not modified.
    """
    folded = copy.deepcopy(unet).eval()
    for block in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        layers = list(block)
        fused: list[nn.Module] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
                fused.append(fuse_conv_bn_eval(layer, following))
                i += 2
            else:
                fused.append(layer)
                i += 1
        for index in range(len(block) - 1, -1, -1):
            del block[index]
        for layer in fused:
            block.append(layer)
    return folded
