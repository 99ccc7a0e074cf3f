"""Pinned host buffers for asynchronous host <-> CUDA copies, one pair per batch shape."""

from __future__ import annotations

import torch


class PinnedStaging:
    """Page-locked float32 input (N, 1, H, W) and output (N, H, W) buffers, kept per shape.

    A caller fills the input buffer, copies it to the device with
    ``non_blocking=True`` on its stream, copies the result back into the
    output buffer the same way and synchronises that stream before reusing
    either buffer.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The (input, output) pinned buffers for a (N, 1, H, W) batch shape."""
        if shape not in self._buffers:
            n, _, h, w = shape
            self._buffers[shape] = (
                torch.empty(shape, dtype=torch.float32, pin_memory=True),
                torch.empty((n, h, w), dtype=torch.float32, pin_memory=True),
            )
        return self._buffers[shape]

    def clear(self) -> None:
        """Free all buffers."""
        self._buffers.clear()
