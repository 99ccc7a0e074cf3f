"""The U-Net published with Groschner, Choi & Scott (2021) in pyNanoFind (Keras).

Layer by layer as the paper's ``get_unet`` builds it, so that its published
weights load unchanged (see :mod:`temseg.model.keras_import`):

- encoder block: 3x3 convolution and batch norm (epsilon 1e-4); the skip
  connection takes the ReLU of that, the path down max-pools it *before* any
  ReLU (no activation on the way down);
- centre: two 3x3 convolution + batch norm + ReLU;
- decoder block: nearest-neighbour 2x upsampling, concatenation with the
  skip first, then 3x3 convolution + batch norm + ReLU, dropout (0.2),
  3x3 convolution + batch norm + ReLU;
- head: a 1x1 convolution to two channels, each through a sigmoid (not a
  softmax); channel 1 is the particle probability.

Keras' batch-norm momentum 0.99 is PyTorch's 0.01. ``forward`` returns
``[0, z1]`` where ``z1`` is the particle logit: its softmax of class 1 is
``sigmoid(z1)``, the network's own probability, so temseg's trainer
fine-tunes exactly the output used at inference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from temseg.model.unet import Network, UNetConfig

BN_EPS = 1e-4
BN_MOMENTUM = 0.01
DROPOUT = 0.2


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]


class PyNanoFindUNet(Network):
    """pyNanoFind's ``get_unet`` (4-8-16-32, centre 32 for the published weights)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.n_classes != 2 or config.in_channels != 1 or not config.batch_norm:
            raise ValueError("the pyNanoFind U-Net has one input channel, batch norm, two outputs")
        self.config = config
        self.down = nn.ModuleList()
        c_prev = config.in_channels
        for c in config.filters:
            self.down.append(nn.Sequential(*_conv_bn(c_prev, c)))
            c_prev = c
        self.pool = nn.MaxPool2d(2)
        self.centre = nn.Sequential(
            *_conv_bn(c_prev, config.centre),
            nn.ReLU(inplace=True),
            *_conv_bn(config.centre, config.centre),
            nn.ReLU(inplace=True),
        )
        self.decode = nn.ModuleList()
        c_prev = config.centre
        for c in reversed(config.filters):
            self.decode.append(
                nn.Sequential(
                    *_conv_bn(c + c_prev, c),
                    nn.ReLU(inplace=True),
                    nn.Dropout(DROPOUT),
                    *_conv_bn(c, c),
                    nn.ReLU(inplace=True),
                )
            )
            c_prev = c
        self.head = nn.Conv2d(c_prev, 2, kernel_size=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last decoder block, the input of the 1x1 ``head``."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(functional.relu(x))
            x = self.pool(x)
        x = self.centre(x)
        for block, skip in zip(self.decode, reversed(skips), strict=True):
            x = functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([skip, x], dim=1))
        return x

    def particle_logit(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of head channel 1 (particle), shape (N, 1, H, W)."""
        bias = self.head.bias
        assert bias is not None
        return functional.conv2d(self.features(x), self.head.weight[1:], bias[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.particle_logit(x)
        return torch.cat([torch.zeros_like(logit), logit], dim=1)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid of head channel 1, as the original network outputs it, (N, 1, H, W)."""
        return torch.sigmoid(self.particle_logit(x))
