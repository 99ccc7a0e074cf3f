"""Page-locked host memory for asynchronous host <-> CUDA copies.

Buffers come from PyTorch's caching host allocator: a block returns to its
cache when the last tensor or array using it is gone, and later requests of
that size reuse it, without page-locking or page-faulting 64 MiB again. The
daemon's readers normalise frames straight into such buffers
(:func:`pinned_empty`) and the CUDA engines hand their results back in them,
so the inference thread copies no frame in host memory; at 4096 x 4096 px
each such copy costs 9-19 ms of one CPU core, more than the network itself.
"""

from __future__ import annotations

import numpy as np
import torch


def pinned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array of ``shape`` in page-locked host memory (needs CUDA).

    The array keeps its block allocated until it and every view of it are gone.
    """
    return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()


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
