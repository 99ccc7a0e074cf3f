"""Which files are frames, and which material a frame is: the rules the daemon and
``temseg reprocess`` share.

Frame files match glob patterns (case-insensitive) and lie inside a root
folder; without ``follow_symlinks`` no component below the root may be a
symbolic link. A frame's material is its metadata's, else the first folder
rule matching its path relative to the root, else a default.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_PATTERNS = ("*.tif", "*.tiff")
MATERIAL_RULE = "1 to 64 letters, digits, '_', '.', '+' or '-', starting with a letter or digit"
_MATERIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


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
) -> list[Path]:
    """Frame files already in ``root`` (resolved), oldest modification time first."""
    root = root.resolve()
    found: list[tuple[int, str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
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
