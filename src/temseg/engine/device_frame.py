"""Raw frame in, mask out: normalisation, padding, threshold and crop as torch ops on the
engine's device, so that a CUDA host neither normalises frames nor receives float maps.

The host hands over the camera's integer counts (half the bytes of float32
for 16-bit counts) and gets back a uint8 0/1 mask on the frame's grid (a
quarter of the bytes of a float32 map, and no thresholding left to do). The
same functions run on the CPU device, where they give, bit for bit, what the
host path gives (:func:`temseg.frames.normalise.normalise`,
:func:`temseg.frames.tiling.pad_to_multiple`,
:func:`temseg.segment.binarize`).

Only frames that need nothing else qualify (:func:`finishes_on_device`):
integer counts of up to 16 bits (exact in float32, never NaN), a
normalisation of "max", "minmax" or "zscore", no resampling to the model's
pixel size, and sides longer than the padding. Other frames take the host path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: Normalisations done on the device; "pynanofind"'s outlier filter stays on the host.
DEVICE_METHODS = ("max", "minmax", "zscore")


def finishes_on_device(
    image: np.ndarray, method: str, grid: tuple[int, int], multiple: int
) -> bool:
    """Whether ``image`` may take the device path: see the module docstring.

    ``grid`` is its shape on the model's pixel grid (pixels), ``multiple`` the
    model's size multiple (pixels).
    """
    return (
        image.ndim == 2
        and np.issubdtype(image.dtype, np.integer)
        and np.can_cast(image.dtype, np.float32, casting="safe")
        and method in DEVICE_METHODS
        and grid == image.shape
        and min(image.shape) > multiple
    )


def normalise_tensor(counts: torch.Tensor, method: str) -> torch.Tensor:
    """Float32 ``counts`` (any shape) scaled as :func:`~temseg.frames.normalise.normalise`
    scales integer counts; a constant image gives zeros. No value leaves the device."""
    x = counts.to(torch.float32)
    low, high = torch.aminmax(x)
    low64, high64 = low.double(), high.double()
    if method == "max":
        scale = (1.0 / torch.maximum(low64.abs(), high64.abs())).float()
        out = x * scale
    elif method == "minmax":
        out = (x - low) * (1.0 / (high64 - low64)).float()
    elif method == "zscore":
        mean, std = x.double().mean(), x.double().std(correction=0)
        out = (x - mean.float()) * (1.0 / std).float()
    else:
        raise ValueError(f"normalisation {method!r} is not done on the device")
    return torch.where(low == high, torch.zeros_like(out), out)


def _upload(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """``image``'s counts on ``device``, its bytes copied as they are.

    uint16 goes up as int16 (same bytes) and is widened there: PyTorch's
    unsigned 16-bit tensors support too few operations to rely on.
    """
    image = np.ascontiguousarray(image)
    if image.dtype == np.uint16:
        signed = torch.from_numpy(image.view(np.int16)).to(device)
        return signed.to(torch.int32).bitwise_and_(0xFFFF)
    return torch.from_numpy(image).to(device)


def pad_tensor(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """A 2-D ``image`` reflected at its bottom and right up to multiples of ``multiple``."""
    h, w = image.shape
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return image
    return F.pad(image[None, None], (0, pad_w, 0, pad_h), mode="reflect")[0, 0]


def frames_to_masks(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: list[np.ndarray],
    method: str,
    multiple: int,
    thresholds: list[float],
    device: torch.device,
) -> list[torch.Tensor]:
    """uint8 0/1 masks, on ``device``, of frames of one shape.

    ``forward`` maps a float32 (N, 1, H, W) batch on ``device`` to the
    probability (N, 1, H, W); ``images`` are integer counts that
    :func:`finishes_on_device`; each mask is ``probability >= threshold``
    on the frame's own grid. The caller copies the masks to the host.
    """
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {t}")
    counts = [_upload(im, device) for im in images]
    batch = torch.stack([pad_tensor(normalise_tensor(c, method), multiple) for c in counts])
    probability = forward(batch[:, None])[:, 0]
    h, w = images[0].shape
    return [
        (probability[i, :h, :w].float() >= float(t)).to(torch.uint8)
        for i, t in enumerate(thresholds)
    ]
