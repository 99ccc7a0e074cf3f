"""Decoded-bytes budget: the header says how much a frame will take; readers share a budget."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from temseg.daemon.decode_budget import DecodeBudget
from temseg.frames import FrameError
from temseg.frames.read import decoded_bytes


def test_a_small_deflate_tiff_announces_its_decoded_size(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((4096, 4096), np.uint16), compression="zlib")
    assert path.stat().st_size < 200_000
    assert decoded_bytes(path) == 4096 * 4096 * 2
    assert decoded_bytes(path, data=path.read_bytes()) == 4096 * 4096 * 2
    with pytest.raises(FrameError, match="not a readable TIFF"):
        decoded_bytes(path, data=b"root:x:0:0")


def test_readers_wait_for_the_budget_and_oversized_frames_fail() -> None:
    budget = DecodeBudget(100)
    assert budget.reserve(60, "a.tif", lambda: False)
    with pytest.raises(FrameError, match=r"b\.tif: decoding needs 101 bytes"):
        budget.reserve(101, "b.tif", lambda: False)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(budget.reserve(50, "c", lambda: False)))
    waiter.start()
    time.sleep(0.3)
    assert got == [] and budget.reserved == 60  # 60 + 50 > 100: waits
    budget.release(60)
    waiter.join(5)
    assert got == [True] and budget.reserved == 50
    assert not budget.reserve(60, "d", lambda: True)  # stopping: gives up
