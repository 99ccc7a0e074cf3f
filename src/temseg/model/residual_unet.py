"""The residual U-Net of HRTEM-Generalization (Scott lab, PyTorch).

As the notebook ``train_test_model_example.ipynb`` defines it, so that its
published weights load unchanged (see :mod:`temseg.model.torch_import`):

- residual block: 3x3 convolution, batch norm, ReLU, 3x3 convolution, batch
  norm, plus a 1x1 convolution of the block's input, then ReLU;
- encoder: one residual block per level, 2x2 max-pooling after it;
- centre ("bottleneck"): one residual block;
- decoder: nearest-neighbour 2x upsampling, concatenation with the skip
  first, one residual block;
- head: a 1x1 convolution to two logits (softmax; class 1 = particle).

The published networks use filters 4-8-16-32 and a centre of 64.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from temseg.model.unet import Network, UNetConfig, folded_head_probability


class ResidualBlock(nn.Module):
    """``relu(body(x) + skip(x))``; ``body`` holds both convolution + batch norm pairs."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, kernel_size=3, padding=1),
            nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.relu(self.body(x) + self.skip(x))


class ResidualUNet(Network):
    """HRTEM-Generalization's ``UNet(4, [4, 8, 16, 32, 64], [2, 2, 2, 2])``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.n_classes != 2 or not config.batch_norm:
            raise ValueError("the residual U-Net has batch norm and two output classes")
        self.config = config
        self.down = nn.ModuleList()
        c_prev = config.in_channels
        for c in config.filters:
            self.down.append(ResidualBlock(c_prev, c))
            c_prev = c
        self.pool = nn.MaxPool2d(2)
        self.centre = ResidualBlock(c_prev, config.centre)
        self.decode = nn.ModuleList()
        c_prev = config.centre
        for c in reversed(config.filters):
            self.decode.append(ResidualBlock(c + c_prev, c))
            c_prev = c
        self.head = nn.Conv2d(c_prev, 2, kernel_size=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last decoder block, the input of the 1x1 ``head``."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.centre(x)
        for block, skip in zip(self.decode, reversed(skips), strict=True):
            x = functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([skip, x], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of class 1 (particle), shape (N, 1, H, W)."""
        return folded_head_probability(self.features(x), self.head)
