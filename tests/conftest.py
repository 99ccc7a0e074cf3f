"""Shared test set-up: private caches, an acquisition folder and a database path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point ``XDG_CACHE_HOME`` (ONNX exports, engine plans) at a temporary folder."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def acq(tmp_path: Path) -> Path:
    """An empty acquisition folder (resolved path)."""
    folder = tmp_path / "acq"
    folder.mkdir()
    return folder.resolve()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's SQLite database goes (its folder does not exist yet)."""
    return tmp_path / "state" / "temseg.db"
