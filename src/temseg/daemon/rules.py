"""Per-frame decisions that depend only on settings: material, output paths, safety checks."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url

from temseg.config import ConfigError, Settings

MATERIAL_RULE = "1 to 64 letters, digits, '_', '.', '+' or '-', starting with a letter or digit"
_MATERIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_LOCAL_TRANSPORTS = ("ipc", "inproc")
_LOOPBACK_NAMES = ("localhost", "lo")


def valid_material(name: str) -> bool:
    """True when ``name`` may be used as a material (see ``MATERIAL_RULE``).

    Materials go into stream topics, log lines and database rows; the rule
    keeps out path separators, '..' prefixes, spaces and control characters.
    """
    return _MATERIAL_NAME.fullmatch(name) is not None


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


def resolve_material(
    frame_material: str | None,
    relative_path: str,
    folder_rules: Mapping[str, str],
    default: str,
) -> tuple[str, str]:
    """(material, source) for a frame: its metadata, else the first folder rule, else ``default``.

    ``relative_path`` is the frame's path relative to the watched folder,
    '/'-separated. Folder rules are shell globs matched against it in their
    configured order (``*`` also matches '/', so ``CdSe/**`` and ``CdSe/*``
    both cover every file below ``CdSe``). ``source`` is "metadata",
    "folder_rule" or "default".
    """
    if frame_material:
        return frame_material, "metadata"
    for pattern, material in folder_rules.items():
        if fnmatch.fnmatchcase(relative_path, pattern):
            return material, "folder_rule"
    return default, "default"


def relative_posix(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with '/' separators."""
    return path.relative_to(root).as_posix()


def mask_path(masks_root: Path, relative_path: str) -> Path:
    """Where the mask of the frame at ``relative_path`` goes: the same relative path under
    ``masks_root``, with the suffix ``.tif``."""
    return (masks_root / relative_path).with_suffix(".tif")


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


#: ``host_priority`` values: the CPU scheduling of the readers, segmenters and recorder.
#: "idle" runs them under Linux's SCHED_IDLE (only on cores nothing else wants: it can stall
#: beside other busy programs), "normal" leaves them as they are; "auto" is "normal".
HOST_PRIORITIES = ("auto", "normal", "idle")


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
    if settings.readers < 0 or settings.segmenters < 0:
        raise ConfigError("readers and segmenters must be 0 (from the cores) or more")
    if settings.host_priority not in HOST_PRIORITIES:
        raise ConfigError(
            f"host_priority {settings.host_priority!r}: choose from {', '.join(HOST_PRIORITIES)}"
        )
    if settings.tile < 0 or settings.tile_overlap < 0:
        raise ConfigError("tile must be 0 (from the device) or more, tile_overlap 0 or more")
    for shape in settings.warmup_shapes:
        parse_shape(shape)
    if not settings.patterns:
        raise ConfigError("patterns is empty: nothing would ever be processed")
    for material in (settings.material, *settings.folder_rules.values()):
        if not valid_material(material):
            raise ConfigError(f"material {material!r} is not a valid name: {MATERIAL_RULE}")
    return root
