"""Read buffers: a buffer is used again only once nothing refers to it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile

from temseg.daemon.read_buffers import ReadBuffers
from temseg.daemon.safe_read import read_listed
from temseg.frames import read_frame

MiB = 1 << 20


def test_a_buffer_is_handed_out_again_only_when_unreferenced() -> None:
    buffers = ReadBuffers(4)
    first = buffers(1000)
    assert buffers(1000) is not first  # the caller still holds it
    first_id = id(first)
    view = np.frombuffer(first, np.uint8)  # a frame decoded without a copy
    del first
    assert all(id(buffers(1000)) != first_id for _ in range(3))
    del view
    assert id(buffers(1000)) == first_id


def test_sizes_are_not_mixed_and_the_pool_is_bounded() -> None:
    buffers = ReadBuffers(2)
    small, large = buffers(10), buffers(20)
    assert (len(small), len(large)) == (10, 20)
    assert buffers(30) is None  # all in use: read into fresh memory instead
    del small
    again = buffers(30)  # replaces the least recently used unused buffer
    assert again is not None and len(again) == 30
    assert len(buffers) == 2 and buffers(20) is None  # 'large' is still held


def _tiff(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 4000, (256, 256), dtype=np.uint16)
    out = io.BytesIO()
    tifffile.imwrite(out, image)
    return out.getvalue()


def test_a_frame_read_into_a_buffer_survives_the_next_reads(tmp_path: Path) -> None:
    """An uncompressed TIFF decodes to a view of its buffer: reading more files of the
    same size while the frame is alive must not overwrite its pixels."""
    root = tmp_path.resolve()
    buffers = ReadBuffers(2)
    paths = []
    for i in range(4):
        paths.append(root / f"f{i}.tif")
        paths[-1].write_bytes(_tiff(i))
    data, _ = read_listed(paths[0], root, max_bytes=MiB, into=buffers)
    assert isinstance(data, bytearray) and data == paths[0].read_bytes()
    frame = read_frame(paths[0], data=data)
    del data
    expected = read_frame(paths[0]).image.copy()
    for path in paths[1:]:
        other, _ = read_listed(path, root, max_bytes=MiB, into=buffers)
        assert other == path.read_bytes()
        del other
    np.testing.assert_array_equal(frame.image, expected)


def test_a_file_that_grows_or_shrinks_after_fstat_is_read_as_it_is(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    path = root / "growing.tif"
    path.write_bytes(b"A" * 5000)
    buffers = ReadBuffers(2)

    def grow_first(size: int) -> bytearray | None:
        with path.open("ab") as fh:
            fh.write(b"B" * 3000)
        return buffers(size)

    data, _ = read_listed(path, root, max_bytes=MiB, into=grow_first)
    assert data == b"A" * 5000 + b"B" * 3000

    def shrink_first(size: int) -> bytearray | None:
        with path.open("r+b") as fh:
            fh.truncate(100)
        return buffers(size)

    data, _ = read_listed(path, root, max_bytes=MiB, into=shrink_first)
    assert data == b"A" * 100
