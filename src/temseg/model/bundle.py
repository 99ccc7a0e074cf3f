"""Model bundles: ``model.safetensors`` (weights) + ``model.json`` (metadata).

A bundle is a directory. Weights are stored with safetensors only; nothing is
ever unpickled. The model id is the first 16 hex digits of the SHA-256 of the
safetensors file, so identical weights always get the same id.

``model.json`` keys (``format`` = "temseg.model/1"):

- ``architecture``: :meth:`UNetConfig.to_dict`; its ``kind`` ("unet" when absent)
  picks the architecture (:func:`temseg.model.unet.build_unet`)
- ``normalisation``: ``{"method": "max" | "minmax" | "zscore" | "pynanofind"}``
  (:func:`temseg.frames.normalise.normalise`; "max" when absent)
- ``source``: for imported networks, the original file and its format (optional)
- ``pixel_nm``: training pixel size in nm per pixel (``null`` if unknown)
- ``materials``: materials seen in training
- ``default_threshold`` and ``thresholds`` (per material, optional)
- ``metrics``: per-material validation metrics, ``training``: data/seed summary
- ``model_id``, ``created_at`` (ISO 8601 UTC), ``temseg_version``
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from temseg import __version__
from temseg.model.unet import Network, UNetConfig, build_unet

BUNDLE_FORMAT = "temseg.model/1"
WEIGHTS_NAME = "model.safetensors"
METADATA_NAME = "model.json"
ONNX_NAME = "model.onnx"


class BundleError(ValueError):
    """A model bundle is missing, incomplete or inconsistent."""


@dataclass
class ModelBundle:
    """A loaded model: the network (eval mode, CPU) and its metadata."""

    model: Network
    metadata: dict[str, Any]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return str(self.metadata["model_id"])

    @property
    def config(self) -> UNetConfig:
        return self.model.config

    @property
    def pixel_nm(self) -> float | None:
        value = self.metadata.get("pixel_nm")
        return None if value is None else float(value)

    @property
    def normalisation(self) -> str:
        return str(self.metadata.get("normalisation", {}).get("method", "max"))

    def threshold_for(self, material: str | None) -> float:
        """The bundle's own threshold for a material, else its default."""
        thresholds = self.metadata.get("thresholds", {})
        if material is not None and material in thresholds:
            return float(thresholds[material])
        return float(self.metadata.get("default_threshold", 0.5))

    @property
    def onnx_path(self) -> Path | None:
        if self.path is None:
            return None
        candidate = self.path / ONNX_NAME
        return candidate if candidate.is_file() else None


def default_model_path() -> Path:
    """Directory of the model bundle shipped inside the package."""
    return Path(str(resources.files("temseg.model") / "default"))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(model: Network, metadata: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``model`` and ``metadata`` as a bundle into ``out_dir``; return the directory.

    ``architecture``, ``format``, ``model_id``, ``created_at`` and
    ``temseg_version`` are filled in here; everything else comes from ``metadata``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": BUNDLE_FORMAT})
    meta = dict(metadata)
    meta.update(
        format=BUNDLE_FORMAT,
        architecture=model.config.to_dict(),
        model_id=_file_sha256(weights)[:16],
        created_at=meta.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds"),
        temseg_version=__version__,
    )
    meta.setdefault("normalisation", {"method": "max"})
    meta.setdefault("default_threshold", 0.5)
    (out / METADATA_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    # safetensors creates its file 0600; give it the mode of model.json (the umask's),
    # so a service user who can read the bundle can read its weights.
    weights.chmod((out / METADATA_NAME).stat().st_mode & 0o777)
    return out


def load_bundle(path: str | Path | None = None) -> ModelBundle:
    """Load a bundle directory (or its ``model.json``); ``None`` loads the bundled default.

    Raises :class:`BundleError` with a readable message for a missing
    directory, unreadable JSON, corrupt weights or weights that do not match
    the declared architecture.
    """
    root = default_model_path() if path is None else Path(path)
    if root.is_file() and root.name in (METADATA_NAME, WEIGHTS_NAME):
        root = root.parent
    meta_file, weights_file = root / METADATA_NAME, root / WEIGHTS_NAME
    if not meta_file.is_file() or not weights_file.is_file():
        raise BundleError(f"{root}: not a model bundle (needs {METADATA_NAME} and {WEIGHTS_NAME})")
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_file}: unreadable metadata: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_file}: not a {BUNDLE_FORMAT} bundle")
    try:
        config = UNetConfig.from_dict(metadata["architecture"])
        model = build_unet(config)
        state = load_file(str(weights_file))
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError, OSError) as exc:
        raise BundleError(f"{root}: weights do not load: {exc}") from exc
    actual_id = _file_sha256(weights_file)[:16]
    if metadata.get("model_id") != actual_id:
        declared = metadata.get("model_id")
        raise BundleError(f"{root}: model_id {declared!r} does not match the weights ({actual_id})")
    model.eval()
    return ModelBundle(model=model, metadata=metadata, path=root.resolve())


def torch_state_equal(a: Network, b: Network) -> bool:
    """True when two networks hold identical parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
