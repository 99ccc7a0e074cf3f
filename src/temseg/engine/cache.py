"""Where engines keep derived files: ONNX exports, TensorRT plans, timing caches.

One directory holds them all: ``cache_dir`` if given (the ``engine_cache``
setting), else ``$XDG_CACHE_HOME/temseg/engines`` (``~/.cache/temseg/engines``
when ``XDG_CACHE_HOME`` is unset). Model bundle directories are only read,
never written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from temseg.model.bundle import ModelBundle
from temseg.model.onnx_export import DEFAULT_OPSET, export_onnx, model_fingerprint, onnx_matches


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/temseg/engines``, falling back to ``~/.cache/temseg/engines``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "temseg" / "engines"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` (expanded) if given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_onnx(
    bundle: ModelBundle, *, fp16: bool = False, cache_dir: str | Path | None = None
) -> Path:
    """An ONNX file of ``bundle``'s probability graph at the requested precision.

    The bundle's own ``model.onnx`` is used when its metadata matches the
    weights and precision; otherwise the graph is exported once into the
    cache directory and reused from there.
    """
    bundled = bundle.onnx_path
    if bundled is not None and onnx_matches(bundled, bundle, fp16=fp16):
        return bundled
    precision = "fp16" if fp16 else "fp32"
    name = f"{model_fingerprint(bundle)}-{precision}-opset{DEFAULT_OPSET}.onnx"
    target = resolve_cache_dir(cache_dir) / name
    if target.is_file() and onnx_matches(target, bundle, fp16=fp16):
        return target
    return export_onnx(bundle, target, fp16=fp16)
