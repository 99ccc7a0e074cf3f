"""Which files are frames, and which material a frame is: the rules the daemon and
``temseg reprocess`` share.

Frame files match glob patterns (case-insensitive) and lie inside a root
folder; without ``follow_symlinks`` no component below the root may be a
symbolic link. A frame's material is its metadata's, else the first folder
rule matching its path relative to the root, else a default.

Folder trees are walked without recursion (:func:`walk`) and frames are
looked for only ``max_depth`` folders deep (deeper folders are logged once at
WARNING), so a hostile ``mkdir -p`` of a thousand levels neither raises
RecursionError nor keeps the daemon from starting; a folder that cannot be
read is logged at WARNING and skipped.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import AnyStr

logger = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("*.tif", "*.tiff", "*.mrc", "*.mrcs", "*.emd", "*.dm3", "*.dm4", "*.ser")
MATERIAL_RULE = "1 to 64 letters, digits, '_', '.', '+' or '-', starting with a letter or digit"
_MATERIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")

DEFAULT_MAX_DEPTH = 32
"""Folders below the watched folder in which frames are looked for."""

WALK_DEPTH_LIMIT = 64
"""Deepest level any walk of the watched tree descends to, watchdog's included."""

_warned_folders: set[str] = set()  # too-deep folders already logged (bounded below)
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


def warn_once(folder: str | bytes, text: str, log: logging.Logger = logger) -> None:
    """Log ``text % folder`` at WARNING the first time ``folder`` comes up (1,000 at most)."""
    key = os.fsdecode(folder)
    if key in _warned_folders or len(_warned_folders) >= 1000:
        return
    _warned_folders.add(key)
    log.warning(text, shown_path(key))


def walk(
    top: AnyStr,
    *,
    followlinks: bool = False,
    max_depth: int = WALK_DEPTH_LIMIT,
) -> Iterator[tuple[AnyStr, list[AnyStr], list[AnyStr]]]:
    """:func:`os.walk` (top-down) without recursion, at most ``max_depth`` levels below ``top``.

    On Python 3.11 ``os.walk`` recurses once per level, so a tree deeper than
    the recursion limit raised RecursionError. Folders that cannot be listed
    are logged at WARNING and skipped; callers may prune ``dirnames`` in place.
    """
    stack: list[tuple[AnyStr, int]] = [(top, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            logger.warning("cannot list folder=%s: %s", shown_path(os.fsdecode(folder)), exc)
            continue
        dirnames: list[AnyStr] = []
        filenames: list[AnyStr] = []
        links: set[AnyStr] = set()
        for entry in entries:
            try:
                is_dir = entry.is_dir()
                if is_dir and entry.is_symlink():
                    links.add(entry.name)
            except OSError:
                is_dir = False
            (dirnames if is_dir else filenames).append(entry.name)
        yield folder, dirnames, filenames
        below = [d for d in dirnames if followlinks or d not in links]
        if below and depth >= max_depth:
            warn_once(
                folder,
                f"not looking below folder=%s: more than {max_depth} folder levels deep",
            )
            continue
        for name in reversed(below):
            stack.append((os.path.join(folder, name), depth + 1))


def matches(name: str, patterns: Sequence[str]) -> bool:
    """True when the file name ``name`` matches one of the glob ``patterns`` (case-insensitive)."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


def admissible(path: Path, root: Path, follow_symlinks: bool = False) -> bool:
    """True when ``path`` is a regular file the daemon may read.

    ``root`` must be absolute and resolved. Without ``follow_symlinks`` no
    component below ``root`` may be a symbolic link; with it, the link target
    must still lie inside ``root``.
    """
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    if not real.is_relative_to(root) or not real.is_file():
        return False
    return follow_symlinks or real == path


def scan_backlog(
    root: Path,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    recursive: bool = True,
    follow_symlinks: bool = False,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> list[Path]:
    """Frame files already in ``root`` (resolved), oldest modification time first.

    Only ``max_depth`` folder levels below ``root`` are looked at.
    """
    root = root.resolve()
    found: list[tuple[int, str, Path]] = []
    for dirpath, dirnames, filenames in walk(
        str(root), followlinks=follow_symlinks, max_depth=max_depth
    ):
        if not recursive:
            dirnames.clear()
        if follow_symlinks:  # never descend into a linked folder outside the root
            dirnames[:] = [d for d in dirnames if Path(dirpath, d).resolve().is_relative_to(root)]
        for name in filenames:
            if not matches(name, patterns):
                continue
            path = Path(dirpath, name)
            if not admissible(path, root, follow_symlinks):
                continue
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            found.append((mtime, str(path), path))
    found.sort()
    return [p for _, _, p in found]


def valid_material(name: str) -> bool:
    """True when ``name`` may be used as a material (see ``MATERIAL_RULE``).

    Materials go into stream topics, log lines and database rows; the rule
    keeps out path separators, '..' prefixes, spaces and control characters.
    """
    return _MATERIAL_NAME.fullmatch(name) is not None


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
