"""read_listed: what is read is the regular file that was listed, below the watched folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from temseg.daemon.safe_read import TransientReadError, read_listed
from temseg.frames import FrameError

REPO = Path(__file__).resolve().parents[1]
SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"
MiB = 1 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "acq"
    (folder / "sub").mkdir(parents=True)
    return folder.resolve()


def test_a_regular_file_is_read_whole(root: Path) -> None:
    frame = root / "sub" / "a.tif"
    frame.write_bytes(b"II*\x00" + bytes(range(256)) * 10)
    data, mtime = read_listed(frame, root, max_bytes=MiB)
    assert data == frame.read_bytes() and mtime == frame.stat().st_mtime
    info = frame.stat()
    assert read_listed(frame, root, max_bytes=MiB, identity=(info.st_dev, info.st_ino))[0] == data


def test_a_link_to_a_secret_is_refused_without_quoting_it(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    link = root / "newest.tif"
    link.symlink_to(secret)
    for follow in (False, True):
        with pytest.raises(FrameError) as info:
            read_listed(link, root, max_bytes=MiB, follow_symlinks=follow)
        said = str(info.value).replace(str(tmp_path), "")
        assert "root" not in said and "secret" not in said


def test_a_folder_swapped_for_a_link_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.tif").write_bytes(SECRET)
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(FrameError, match="folder on its path is a symbolic link"):
        read_listed(root / "sub" / "a.tif", root, max_bytes=MiB)


def test_a_fifo_is_refused_at_once(root: Path) -> None:
    fifo = root / "wedge.tif"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(FrameError, match="not a regular file"):
        read_listed(fifo, root, max_bytes=MiB)
    assert time.monotonic() - start < 5  # the old open() waited for a writer forever


def test_a_link_to_dev_zero_is_refused_even_when_links_are_followed(root: Path) -> None:
    link = root / "zero.tif"
    link.symlink_to("/dev/zero")
    with pytest.raises(FrameError):
        read_listed(link, root, max_bytes=MiB, follow_symlinks=True)
    with pytest.raises(FrameError, match="symbolic link"):
        read_listed(link, root, max_bytes=MiB)


def test_a_file_above_max_bytes_is_refused_unread(root: Path) -> None:
    big = root / "sparse.tif"
    with big.open("wb") as fh:
        fh.truncate(64 << 30)  # 64 GiB, sparse: nothing is read
    with pytest.raises(FrameError, match="exceeds max_file_bytes"):
        read_listed(big, root, max_bytes=MiB)


def test_a_file_replaced_after_listing_is_refused(root: Path, tmp_path: Path) -> None:
    frame = root / "a.tif"
    frame.write_bytes(b"first")
    info = frame.stat()
    os.link(frame, tmp_path / "kept")  # the old inode stays in use: the new file gets another
    frame.unlink()
    frame.write_bytes(b"second")
    with pytest.raises(FrameError, match="replaced"):
        read_listed(frame, root, max_bytes=MiB, identity=(info.st_dev, info.st_ino))


def test_paths_outside_the_folder_are_refused(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.tif"
    other.write_bytes(b"x")
    with pytest.raises(FrameError, match="outside"):
        read_listed(other, root, max_bytes=MiB)


def test_no_descriptor_left_is_transient_not_a_verdict(root: Path) -> None:
    frame = root / "a.tif"
    frame.write_bytes(b"x")
    script = (
        "import os, resource, sys\n"
        "from pathlib import Path\n"
        "from temseg.daemon.safe_read import TransientReadError, read_listed\n"
        "held = []\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "try:\n"
        "    while True:\n"
        "        held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        "    read_listed(Path(sys.argv[1]), Path(sys.argv[2]), max_bytes=10)\n"
        "except TransientReadError as exc:\n"
        "    print('transient', exc.errno)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(frame), str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=60,
    )
    assert done.stdout.split() == ["transient", str(24)], done.stderr  # EMFILE
    assert issubclass(TransientReadError, OSError) and not issubclass(
        TransientReadError, FrameError
    )
