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


MASK_SUFFIX = ".mask.tif"


def mask_path(masks_root: Path, relative_path: str) -> Path:
    """Where the mask of the frame at ``relative_path`` goes: the same relative path under
    ``masks_root`` with :data:`MASK_SUFFIX` appended (``scan.tif`` -> ``scan.tif.mask.tif``).

    Appending keeps the mapping one-to-one: ``scan.tif`` and ``scan.tiff`` in one
    folder get two masks, where replacing the suffix gave both ``scan.tif``.
    """
    return masks_root / (relative_path + MASK_SUFFIX)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown_path(path: str | Path) -> str:
    """``path`` as text that is safe in a log line, a database row and a stream message.

    Control characters (a newline would start a forged log line) and the
    backslash become ``\\xNN`` escapes; bytes of a file name that are not
    UTF-8 (kept by Python as lone surrogates, which SQLite and the stream's
    JSON refuse to encode) become ``\\xNN`` as well. A valid UTF-8 name without
    control characters or backslashes comes back unchanged, so the same file
    always gives the same text.
    """
    raw = str(path).encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable() and "\\" not in text:
        return text
    # Escape the backslashes that were in the name, not those backslashreplace added.
    parts = raw.split(b"\\")
    pieces = (
        _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", p.decode("utf-8", "backslashreplace"))
        for p in parts
    )
    return "\\x5c".join(pieces)


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
#: "idle" runs them under Linux's SCHED_IDLE (only on cores nothing else wants), "normal"
#: leaves them as they are, "auto" means "idle" when the engine computes on the CPU.
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
