"""Page-locked host memory for asynchronous host <-> CUDA copies.

Buffers come from PyTorch's caching host allocator: a block returns to its
cache when the last tensor or array using it is gone, and later requests of
that size reuse it, without page-locking or page-faulting 64 MiB again. The
daemon's readers normalise frames straight into such buffers
(:func:`pinned_empty`) and the CUDA engines hand their results back in them,
so the inference thread copies no frame in host memory: at 4096 x 4096 px
such a copy costs a CPU core more time than the network itself takes on a
GPU (``benchmarks/RESULTS.md``, "GPU path changes without a GPU").
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)
_warned = False  # the fallback to ordinary memory was logged


def pinned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array of ``shape`` in page-locked host memory.

    The array keeps its block allocated until it and every view of it are
    gone. When no page-locked memory can be had (no CUDA, or the system
    refuses more), an ordinary array, which the engines copy through a
    page-locked buffer of their own; the first such case is logged.
    """
    global _warned
    try:
        return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()
    except RuntimeError as exc:
        if not _warned:
            _warned = True
            logger.warning("page-locked host memory unavailable, using ordinary memory: %s", exc)
        return np.empty(shape, dtype=np.float32)


def pinned_source(x: np.ndarray) -> torch.Tensor:
    """``x`` (C-contiguous float32) as a page-locked CPU tensor: a view when it already is one.

    Otherwise a page-locked copy; either way the caller must keep ``x``
    unchanged until the copy to the device has completed (synchronise the stream).
    """
    tensor = torch.from_numpy(x)
    if tensor.is_pinned():
        return tensor
    staged = torch.empty(x.shape, dtype=tensor.dtype, pin_memory=True)
    staged.copy_(tensor)
    return staged
