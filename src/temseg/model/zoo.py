"""Import the published networks of the paper's lab as temseg model bundles.

Two formats (see docs/models.md for where the files come from):

- ``"pynanofind"``: Keras 2.2 ``save_weights`` HDF5 files of pyNanoFind's
  U-Net (:mod:`temseg.model.keras_import`); input normalisation
  "pynanofind"; pixel size unknown unless given.
- ``"hrtem-generalization"``: whole PyTorch modules saved with
  ``torch.save`` (named ``*_model.h5``) of HRTEM-Generalization's residual
  U-Net, read without running pickled code
  (:mod:`temseg.model.torch_import`); per-frame z-score normalisation; pixel
  size from the magnification in the file name (:data:`HRTEM_PIXEL_NM`).

The bundle is a normal one (safetensors + JSON + ONNX); ``source`` in its
JSON names the original file, its SHA-256 and its format.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch

from temseg.model.bundle import ONNX_NAME, ModelBundle, load_bundle, save_bundle
from temseg.model.keras_import import KerasFileError, load_pynanofind
from temseg.model.onnx_export import export_onnx
from temseg.model.residual_unet import ResidualUNet
from temseg.model.torch_import import (
    ModuleRecord,
    TorchFileError,
    iter_records,
    module_state_dict,
    read_torch_file,
)
from temseg.model.unet import Network, UNetConfig

Format = Literal["pynanofind", "hrtem-generalization"]
FORMATS: tuple[Format, ...] = ("pynanofind", "hrtem-generalization")
NORMALISATION: dict[Format, str] = {"pynanofind": "pynanofind", "hrtem-generalization": "zscore"}
#: nm per pixel at each magnification of HRTEM-Generalization's data
#: (``trained_models/model_details.csv``), keyed by the file name's "330kX" token.
HRTEM_PIXEL_NM = {"160kX": 0.042, "205kX": 0.033, "260kX": 0.026, "330kX": 0.02}
_MATERIAL_TOKENS = (
    ("AuCdSe", ("Au", "CdSe")),
    ("CdSe", ("CdSe",)),
    ("Ag", ("Ag",)),
    ("Au", ("Au",)),
)
#: their module attribute names -> temseg's, per residual block
_BLOCK_NAMES = {
    "conv1": "body.0",
    "bn1": "body.1",
    "conv2": "body.3",
    "bn2": "body.4",
    "conv_add": "skip",
}


class ImportFailed(ValueError):
    """The file cannot be imported; the message names it and the reason."""


def materials_in_name(name: str) -> list[str]:
    """Materials named in a published file name ("unet481632_AuDots" -> ["Au"])."""
    for token, materials in _MATERIAL_TOKENS:
        if token in name:
            return list(materials)
    return []


def hrtem_pixel_nm(name: str) -> float | None:
    """Training pixel size (nm) of an HRTEM-Generalization file from its magnification token."""
    match = re.search(r"(\d+kX)", name)
    return None if match is None else HRTEM_PIXEL_NM.get(match.group(1))


def _hrtem_checks(root: ModuleRecord, path: Path) -> None:
    """Refuse saved networks whose fixed (non-weight) settings differ from the residual U-Net."""
    for record in iter_records(root):
        state, kind = record.state, record.class_name
        if kind == "Upsample" and (
            state.get("mode") != "nearest" or float(state.get("scale_factor") or 0) != 2.0
        ):
            raise ImportFailed(f"{path}: an upsampling layer is not nearest-neighbour 2x")
        if kind == "MaxPool2d" and state.get("kernel_size") not in (2, (2, 2)):
            raise ImportFailed(f"{path}: a max-pooling layer is not 2x2")
        if kind == "BatchNorm2d" and abs(float(state.get("eps", 0.0)) - 1e-5) > 1e-12:
            raise ImportFailed(f"{path}: a batch norm has eps {state.get('eps')}, not 1e-5")


def hrtem_state_dict(theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HRTEM-Generalization's ``UNet`` state dict renamed to :class:`ResidualUNet`'s."""
    ours = {}
    for name, tensor in theirs.items():
        parts = name.split(".")
        if parts[0] in ("downs", "ups"):
            top, rest = f"{'down' if parts[0] == 'downs' else 'decode'}.{parts[1]}", parts[2:]
        elif parts[0] == "bottleneck":
            top, rest = "centre", parts[1:]
        elif parts[0] == "final_conv":
            ours["head." + ".".join(parts[1:])] = tensor
            continue
        else:
            raise ImportFailed(f"unexpected tensor {name!r}")
        if not rest or rest[0] not in _BLOCK_NAMES:
            raise ImportFailed(f"unexpected tensor {name!r}")
        ours[".".join([top, _BLOCK_NAMES[rest[0]], *rest[1:]])] = tensor
    return ours


def load_hrtem_generalization(path: str | Path) -> ResidualUNet:
    """The residual U-Net with the weights of an HRTEM-Generalization file, in eval mode."""
    path = Path(path)
    try:
        root = read_torch_file(path)
        theirs = module_state_dict(root)
    except TorchFileError as exc:
        raise ImportFailed(
            str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
        ) from exc
    if isinstance(root, ModuleRecord):
        _hrtem_checks(root, path)
    try:
        ours = hrtem_state_dict(theirs)
        depth = len({k.split(".")[1] for k in ours if k.startswith("down.")})
        filters = tuple(int(ours[f"down.{i}.body.0.weight"].shape[0]) for i in range(depth))
        config = UNetConfig.from_dict(
            {
                "kind": "residual",
                "filters": filters,
                "centre": int(ours["centre.body.0.weight"].shape[0]),
                "in_channels": int(ours["down.0.body.0.weight"].shape[1]),
                "preset": "hrtem-generalization",
            }
        )
        net = ResidualUNet(config)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ours.items()})
    except (ImportFailed, KeyError, ValueError, RuntimeError) as exc:
        raise ImportFailed(
            f"{path}: not HRTEM-Generalization's residual U-Net: {exc}".splitlines()[0]
        ) from exc
    return net.eval()


def _other_format_hint(path: Path, fmt: Format) -> str:
    """A hint naming the other format when the file looks like it, else an empty string."""
    if fmt == "pynanofind" and zipfile.is_zipfile(path):
        return "; a zip archive: is it a --format hrtem-generalization file?"
    with path.open("rb") as handle:
        magic = handle.read(8)
    if fmt == "hrtem-generalization" and magic == b"\x89HDF\r\n\x1a\n":
        return "; an HDF5 file: is it a --format pynanofind file?"
    return ""


def load_foreign(path: str | Path, fmt: Format) -> Network:
    """The network stored in ``path`` in format ``fmt``, in eval mode (nothing written)."""
    path = Path(path)
    try:
        if fmt == "pynanofind":
            try:
                return load_pynanofind(path)
            except KerasFileError as exc:
                raise ImportFailed(str(exc)) from exc
        if fmt == "hrtem-generalization":
            return load_hrtem_generalization(path)
    except ImportFailed as exc:
        raise ImportFailed(f"{exc}{_other_format_hint(path, fmt)}") from exc
    raise ImportFailed(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_model(
    path: str | Path,
    fmt: Format,
    out_dir: str | Path,
    *,
    name: str | None = None,
    pixel_nm: float | None = None,
    materials: list[str] | None = None,
) -> ModelBundle:
    """Write the network in ``path`` as a temseg bundle in ``out_dir`` (with ``model.onnx``).

    ``pixel_nm`` (nm per pixel) and ``materials`` override what the file
    name tells; ``name`` defaults to the file's stem. Raises
    :class:`ImportFailed` with a one-line reason; ``path`` is only read.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    net = load_foreign(path, fmt)
    if pixel_nm is None and fmt == "hrtem-generalization":
        pixel_nm = hrtem_pixel_nm(path.name)
    metadata: dict[str, Any] = {
        "name": name or path.stem,
        "materials": materials if materials is not None else materials_in_name(path.name),
        "pixel_nm": pixel_nm,
        "normalisation": {"method": NORMALISATION[fmt]},
        "default_threshold": 0.5,
        "thresholds": {},
        "metrics": {},
        "source": {"file": path.name, "sha256": _sha256(path), "format": fmt},
    }
    bundle_path = save_bundle(net, metadata, out_dir)
    bundle = load_bundle(bundle_path)
    export_onnx(bundle, bundle_path / ONNX_NAME)
    return bundle
