"""Reprocessing an archive on a real Dask cluster (127.0.0.1) into SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from sqlalchemy import text

from temseg import store
from temseg.config import Settings
from temseg.model.bundle import load_bundle, save_bundle
from temseg.model.unet import UNetConfig, build_unet

pytest.importorskip("distributed")

from temseg.reprocess import ReprocessError, find_frames, reprocess

TINY = UNetConfig(filters=(2, 4), centre=4, preset=None)


def tiff_bytes(seed: int, size: int = 64, material: str | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 4000, (size, size), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, metadata={"material": material} if material else {})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small model bundles with different weights (so different model ids)."""
    root = tmp_path_factory.mktemp("bundles")
    made = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        made.append(save_bundle(build_unet(TINY), {"default_threshold": 0.5}, root / f"m{seed}"))
    return made[0], made[1]


@pytest.fixture
def archive(tmp_path: Path) -> dict[Path, str]:
    """An archive: frames in two folders (one with a folder rule), one naming its own
    material, one copied under a second name, one that is not a TIFF, one not a frame."""
    root = tmp_path / "archive"
    (root / "2025" / "CdSe").mkdir(parents=True)
    written: dict[Path, str] = {}
    for i in range(6):
        folder = root / "2025" / ("CdSe" if i % 2 else "")
        data = tiff_bytes(i, material="Pt" if i == 4 else None)
        path = folder / f"frame_{i:03d}.tif"
        path.write_bytes(data)
        written[path] = hashlib.sha256(data).hexdigest()
    copy = root / "2025" / "copy_of_frame_000.TIF"
    copy.write_bytes((root / "2025" / "frame_000.tif").read_bytes())
    written[copy] = written[root / "2025" / "frame_000.tif"]
    broken = root / "broken.tif"
    broken.write_bytes(b"not a TIFF at all")
    written[broken] = hashlib.sha256(broken.read_bytes()).hexdigest()
    (root / "notes.txt").write_text("not a frame")
    return written


def result_rows(db_url: str) -> list[dict[str, object]]:
    engine = store.connect(db_url, create=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM frames ORDER BY id")).mappings().all()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


SETTINGS = Settings(folder_rules={"*/CdSe/*": "CdSe"}, material="Au", threads=1)


def test_find_frames_uses_the_daemons_patterns_and_rules(
    archive: dict[Path, str], tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    found = find_frames([root, root / "2025" / "CdSe" / "frame_001.tif"], SETTINGS)
    assert {f.path for f in found} == {str(p) for p in archive}  # no repeats, no notes.txt
    relative = {f.relative for f in found}
    assert "2025/CdSe/frame_001.tif" in relative and "broken.tif" in relative
    with pytest.raises(ReprocessError, match="no such file or folder"):
        find_frames([tmp_path / "missing"], SETTINGS)


def test_reprocess_twice_records_each_frame_once_per_model(
    db_url: str, archive: dict[Path, str], bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = (load_bundle(b).model_id for b in bundles)
    db = store.connect(db_url)
    try:
        store.register_model(db, first, "first", str(bundles[0]), {})
        store.record_calibration(
            db, material="CdSe", model_id=first, threshold=0.3, precision=1, recall=1,
            dice=1, n_images=1, curve={}, plot_path=None, criterion="max_dice",
        )  # fmt: skip
        seen: list[int] = []
        run = reprocess(
            [tmp_path / "archive"], db, model=first, settings=SETTINGS, workers=2,
            processes=False, instrument="titan", progress=lambda s: seen.append(s.handled),
        )  # fmt: skip
        assert (run.found, run.done, run.failed, run.repeats, run.skipped) == (8, 6, 1, 1, 0)
        assert 1 <= run.model_loads <= 2  # once per worker, not once per frame
        assert seen == sorted(seen) and seen[-1] == 8 and not run.interrupted
        assert run.frames_per_s > 0

        again = reprocess(
            [tmp_path / "archive"], db, model=first, settings=SETTINGS, workers=1,
            processes=False,
        )  # fmt: skip
        assert (again.skipped, again.done, again.failed, again.repeats) == (8, 0, 0, 0)
        assert again.model_loads == 0  # nothing left to segment: no model loaded

        other = reprocess(
            [tmp_path / "archive"], db, model=str(bundles[1]), settings=SETTINGS, workers=1,
            processes=False,
        )  # fmt: skip
        assert (other.done, other.failed, other.skipped) == (6, 1, 0)
    finally:
        db.dispose()

    rows = result_rows(db_url)
    keys = [(r["sha256"], r["model_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 7  # 7 distinct contents, 2 models
    assert {r["model_id"] for r in rows} == {first, second}
    by_path = {(r["source_path"], r["model_id"]): r for r in rows}
    cdse = by_path[(str(tmp_path / "archive/2025/CdSe/frame_001.tif"), first)]
    assert (cdse["material"], cdse["threshold"], cdse["instrument"]) == ("CdSe", 0.3, "titan")
    own = by_path[(str(tmp_path / "archive/2025/frame_004.tif"), first)]
    assert own["material"] == "Pt" and own["threshold"] == 0.5  # metadata wins; bundle default
    plain = by_path[(str(tmp_path / "archive/2025/frame_002.tif"), second)]
    assert plain["material"] == "Au" and plain["instrument"] is None and plain["status"] == "done"
    broken = by_path[(str(tmp_path / "archive/broken.tif"), first)]
    assert broken["status"] == "failed" and "broken.tif" in str(broken["error"])
    engine = store.connect(db_url)
    try:
        record = store.get_frame(engine, int(cdse["id"]))  # type: ignore[call-overload]
        assert record is not None and len(record.particles) == record.n_particles
    finally:
        engine.dispose()


def test_reprocess_on_an_existing_scheduler(
    pg_url: str, archive: dict[Path, str], bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        db = store.connect(pg_url)
        try:
            run = reprocess(
                [tmp_path / "archive" / "2025"], db, model=str(bundles[0]), settings=SETTINGS,
                scheduler=cluster.scheduler_address,
            )  # fmt: skip
        finally:
            db.dispose()
    assert (run.done, run.repeats, run.workers) == (6, 1, 1)
    assert len(result_rows(pg_url)) == 6


def test_reprocess_refuses_bad_choices_in_one_line(tmp_path: Path, archive) -> None:
    db = store.connect(tmp_path / "r.db")
    try:
        with pytest.raises(ReprocessError, match="no active model"):
            reprocess([tmp_path / "archive"], db, model="active", processes=False)
        with pytest.raises(ReprocessError, match="neither a bundle folder nor a registered"):
            reprocess([tmp_path / "archive"], db, model="nope", processes=False)
        with pytest.raises(ReprocessError, match="tcp://HOST:PORT"):
            reprocess([tmp_path / "archive"], db, model="bundled", scheduler="127.0.0.1:1")
    finally:
        db.dispose()
    assert result_rows(str(tmp_path / "r.db")) == []


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path: Path, bundles) -> None:
    archive = tmp_path / "big"
    archive.mkdir()
    n = 400  # small frames, but many: the run lasts well beyond the interruption
    for i in range(n):
        (archive / f"f{i:03d}.tif").write_bytes(tiff_bytes(100 + i))
    db = tmp_path / "r.db"
    command = [
        sys.executable, "-m", "temseg", "reprocess", str(archive), "--db", str(db),
        "--model", str(bundles[0]), "--workers", "1", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _count(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: workers get it too
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command to resume" in err
    assert "Traceback" not in err
    recorded = _count(db)
    assert 2 <= recorded < n

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{recorded} already recorded" in resumed.stdout
    assert f"{n - recorded} done" in resumed.stdout
    with sqlite3.connect(db) as conn:
        query = "SELECT sha256, model_id, count(*) FROM frames GROUP BY sha256, model_id"
        rows = conn.execute(query).fetchall()
    assert len(rows) == n and {r[2] for r in rows} == {1}
