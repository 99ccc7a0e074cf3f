"""Read Keras 2 ``save_weights`` HDF5 files into temseg's pyNanoFind U-Net.

The layout (Keras 2.x ``save_weights``, also what Keras 3 writes for a
legacy ``.h5`` file): the root (or its ``model_weights`` group, in a whole
saved model) lists ``layer_names`` in the model's order; each layer's group
lists ``weight_names``, datasets in the layer's own order: convolution
``kernel`` (kh, kw, in, out) and ``bias``, batch norm ``gamma``, ``beta``,
``moving_mean``, ``moving_variance``. Layers with weights are matched to the
network's layers by that order, and every shape is checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from temseg.model.pynanofind import PyNanoFindUNet
from temseg.model.unet import UNetConfig


class KerasFileError(ValueError):
    """A file is not Keras weights of the expected network."""


def read_keras_weights(path: str | Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, weight arrays) for each layer that has weights, in the model's order."""
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise KerasFileError(f"{path}: not an HDF5 file ({exc})") from exc
    with handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise KerasFileError(f"{path}: not Keras weights (no layer_names attribute)")
        layers = []
        for raw in group.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            layer = group[name]
            weight_names = [
                n.decode() if isinstance(n, bytes) else str(n)
                for n in layer.attrs.get("weight_names", [])
            ]
            if weight_names:
                layers.append(
                    (name, [np.asarray(layer[w], dtype=np.float32) for w in weight_names])
                )
    return layers


def _conv_bn_pairs(net: PyNanoFindUNet) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """The network's convolutions in Keras' layer order, each with its batch norm."""
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = []
    for block in [*net.down, net.centre, *net.decode]:
        layers = list(block)
        for conv, following in zip(layers, [*layers[1:], None], strict=True):
            if isinstance(conv, nn.Conv2d):
                assert isinstance(following, nn.BatchNorm2d)
                pairs.append((conv, following))
    pairs.append((net.head, None))
    return pairs


def pynanofind_config(layers: list[tuple[str, list[np.ndarray]]]) -> UNetConfig:
    """The architecture the weights describe: encoder filters and centre width."""
    convs = [w for _, w in layers if len(w) == 2 and w[0].ndim == 4]
    depth, rest = divmod(len(convs) - 3, 3)  # depth encoder + 2 centre + 2 * depth decoder + head
    if rest or depth < 1:
        raise KerasFileError(
            f"{len(convs)} convolutions do not make a pyNanoFind U-Net (3 * depth + 3)"
        )
    filters = tuple(int(w[0].shape[-1]) for w in convs[:depth])
    centre = int(convs[depth][0].shape[-1])
    return UNetConfig.from_dict(
        {"kind": "pynanofind", "filters": filters, "centre": centre, "preset": "pynanofind"}
    )


def load_pynanofind(path: str | Path) -> PyNanoFindUNet:
    """The pyNanoFind U-Net with the weights of a Keras 2 ``save_weights`` file, in eval mode."""
    path = Path(path)
    layers = read_keras_weights(path)
    try:
        net = PyNanoFindUNet(pynanofind_config(layers))
    except (KerasFileError, ValueError) as exc:
        raise KerasFileError(f"{path}: {exc}") from exc
    pairs = _conv_bn_pairs(net)
    expected = len(pairs) + sum(bn is not None for _, bn in pairs)
    if len(layers) != expected:
        raise KerasFileError(
            f"{path}: {len(layers)} layers with weights, the pyNanoFind U-Net has {expected}"
        )
    queue = iter(layers)
    with torch.no_grad():
        for conv, bn in pairs:
            _assign_conv(path, next(queue), conv)
            if bn is not None:
                _assign_bn(path, next(queue), bn)
    return net.eval()


def _check(path: Path, name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if got != want:
        raise KerasFileError(f"{path}: layer {name} has weights of shape {got}, expected {want}")


def _assign_conv(path: Path, layer: tuple[str, list[np.ndarray]], conv: nn.Conv2d) -> None:
    name, weights = layer
    if len(weights) != 2:
        raise KerasFileError(f"{path}: layer {name} is not a convolution with a bias")
    kernel, bias = weights
    want = tuple(conv.weight.shape)
    _check(path, name, kernel.shape, (want[2], want[3], want[1], want[0]))
    assert conv.bias is not None
    _check(path, name, bias.shape, tuple(conv.bias.shape))
    conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
    conv.bias.copy_(torch.from_numpy(bias))


def _assign_bn(path: Path, layer: tuple[str, list[np.ndarray]], bn: nn.BatchNorm2d) -> None:
    name, weights = layer
    if len(weights) != 4:
        raise KerasFileError(f"{path}: layer {name} is not a batch normalisation")
    for array, target in zip(
        weights, (bn.weight, bn.bias, bn.running_mean, bn.running_var), strict=True
    ):
        assert target is not None
        _check(path, name, array.shape, tuple(target.shape))
        target.copy_(torch.from_numpy(array))
