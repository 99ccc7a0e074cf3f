"""Per-frame decisions that depend only on settings: output paths, safety checks.

Which files are frames and which material a frame is: :mod:`temseg.frames.find`,
shared with ``temseg reprocess``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from sqlalchemy.engine import make_url

from temseg.config import ConfigError, Settings, check_options
from temseg.frames.find import MATERIAL_RULE, valid_material
from temseg.frames.find import shown_path as shown_path  # logged, recorded, published paths

_LOCAL_TRANSPORTS = ("ipc", "inproc")
_LOOPBACK_NAMES = ("localhost", "lo")


def is_loopback_endpoint(url: str) -> bool:
    """True when a ZeroMQ bind endpoint is reachable from this host only.

    ``ipc://`` and ``inproc://`` are local; ``tcp://HOST:PORT`` is local when
    HOST is a loopback address, ``localhost`` or the interface ``lo``.
    ``*``, ``0.0.0.0``, other addresses and interfaces, and other transports
    are not.
    """
    scheme, _, rest = url.partition("://")
    if scheme in _LOCAL_TRANSPORTS:
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0].strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MASK_SUFFIX = ".mask.tif"


def mask_path(masks_root: Path, relative_path: str, frame_index: int | None = None) -> Path:
    """Where the mask of the frame at ``relative_path`` goes: the same relative path under
    ``masks_root`` with :data:`MASK_SUFFIX` appended (``scan.tif`` -> ``scan.tif.mask.tif``);
    frame K of a stack (``frame_index``) gets ``.K`` before it (``scan.tif.K.mask.tif``).

    Appending keeps the mapping one-to-one: ``scan.tif`` and ``scan.tiff`` in one
    folder get two masks, where replacing the suffix gave both ``scan.tif``.
    """
    index = "" if frame_index is None else f".{frame_index}"
    return masks_root / (relative_path + index + MASK_SUFFIX)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or path.resolve().is_relative_to(folder.resolve())


def sqlite_file(db_url: str) -> Path | None:
    """The database file of a SQLite URL or bare path, else None."""
    if "://" not in db_url:
        return Path(db_url).expanduser()
    url = make_url(db_url)
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        database = database[5:].split("?", 1)[0]
    return Path(database).expanduser()


def parse_shape(text: str) -> tuple[int, int]:
    """A frame shape "HEIGHTxWIDTH" in pixels, e.g. "4096x4096", as (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        height, width = (int(part) for part in parts)
    except ValueError:
        raise ConfigError(
            f"frame shape {text!r} is not HEIGHTxWIDTH in pixels, e.g. 4096x4096"
        ) from None
    if height < 1 or width < 1:
        raise ConfigError(f"frame shape {text!r} must be at least 1x1 pixels")
    return height, width


def check_daemon_settings(settings: Settings) -> Path:
    """Validate what the daemon needs; return the resolved watched folder.

    Refuses (:class:`ConfigError`) a missing watched folder, a mask folder
    or SQLite database inside it (the daemon never writes there), and
    material names that break ``MATERIAL_RULE``.
    """
    if settings.watch is None:
        raise ConfigError("no folder to watch: pass --watch DIR or set 'watch' in the config")
    root = Path(settings.watch).expanduser()
    if not root.is_dir():
        raise ConfigError(f"watched folder {root} does not exist or is not a folder")
    root = root.resolve()
    if settings.masks is not None and _inside(Path(settings.masks).expanduser(), root):
        raise ConfigError(
            f"mask folder {settings.masks} is inside the watched folder {root}; "
            "the acquisition folder is never written to: choose another folder"
        )
    db_file = sqlite_file(settings.db)
    if db_file is not None and _inside(db_file.parent, root):
        raise ConfigError(
            f"database {db_file} is inside the watched folder {root}; "
            "the acquisition folder is never written to: choose another location"
        )
    if settings.queue_size < 1 or settings.batch_size < 1:
        raise ConfigError("queue_size and batch_size must be at least 1")
    if settings.min_particle_nm < 0:
        raise ConfigError("min_particle_nm must be 0 (count every component) or more")
    if settings.max_subscribers < 1:
        raise ConfigError("max_subscribers must be at least 1")
    if settings.readers < 0 or settings.segmenters < 0:
        raise ConfigError("readers and segmenters must be 0 (from the cores) or more")
    check_options(settings)  # string options, also when set after the Settings was made
    if settings.tile < 0 or settings.tile_overlap < 0:
        raise ConfigError("tile must be 0 (from the device) or more, tile_overlap 0 or more")
    for shape in settings.warmup_shapes:
        parse_shape(shape)
    if not settings.patterns:
        raise ConfigError("patterns is empty: nothing would ever be processed")
    if settings.instrument is not None and not 0 < len(settings.instrument) <= 64:
        raise ConfigError(f"instrument {settings.instrument!r} must be 1 to 64 characters")
    for material in (settings.material, *settings.folder_rules.values()):
        if not valid_material(material):
            raise ConfigError(f"material {material!r} is not a valid name: {MATERIAL_RULE}")
    parse_listen(settings.metrics, "metrics")
    if settings.stuck_after_s <= 0:
        raise ConfigError("stuck_after_s must be more than 0 seconds")
    if settings.send_preview_px < 0:
        raise ConfigError("send_preview_px must be 0 (no preview) or more pixels")
    return root


def parse_listen(value: str, setting: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ``"off"`` -> None.

    Raises :class:`ConfigError` naming ``setting`` for anything else.
    """
    if value.strip().lower() == "off":
        return None
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{setting} {value!r}: expected HOST:PORT (e.g. 127.0.0.1:9557) or 'off'")
    return host, int(port)
