"""The results database on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pgkit
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError

from temseg import store
from temseg.segment import find_particles
from temseg.store import schema
from temseg.store.tables import FrameRow

SHA = "ab" * 32

# The first layout of the database (schema version 1), as an older temseg wrote it.
V1_DDL = """
CREATE TABLE schema_info (version INTEGER PRIMARY KEY);
INSERT INTO schema_info (version) VALUES (1);
CREATE TABLE frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source_path TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL,
    size_bytes INTEGER NOT NULL, material VARCHAR(64), status VARCHAR(16) NOT NULL, error TEXT,
    model_id VARCHAR(128), threshold FLOAT, n_particles INTEGER, area_fraction FLOAT,
    mask_path TEXT, height INTEGER, width INTEGER, pixel_nm FLOAT, seq INTEGER,
    received_at DATETIME, processed_at DATETIME NOT NULL,
    CONSTRAINT uq_frames_source_sha256 UNIQUE (source_path, sha256),
    CONSTRAINT ck_frames_status CHECK (status IN ('done', 'failed'))
);
CREATE TABLE particles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_id INTEGER NOT NULL REFERENCES frames (id) ON DELETE CASCADE,
    label INTEGER NOT NULL, area_px INTEGER NOT NULL, equiv_diameter_px FLOAT NOT NULL,
    equiv_diameter_nm FLOAT, area_nm2 FLOAT, centroid_y FLOAT NOT NULL, centroid_x FLOAT NOT NULL,
    bbox_y0 INTEGER NOT NULL, bbox_x0 INTEGER NOT NULL, bbox_y1 INTEGER NOT NULL,
    bbox_x1 INTEGER NOT NULL, touches_border BOOLEAN NOT NULL
);
CREATE INDEX ix_particles_frame_id ON particles (frame_id);
CREATE TABLE models (
    id VARCHAR(128) PRIMARY KEY, name VARCHAR(256) NOT NULL, path TEXT NOT NULL,
    created_at DATETIME NOT NULL, metadata JSON NOT NULL, active BOOLEAN NOT NULL
);
CREATE UNIQUE INDEX uq_models_one_active ON models (active) WHERE active;
CREATE TABLE calibrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, material VARCHAR(64) NOT NULL,
    model_id VARCHAR(128) NOT NULL, threshold FLOAT NOT NULL, precision FLOAT NOT NULL,
    recall FLOAT NOT NULL, dice FLOAT NOT NULL, n_images INTEGER NOT NULL,
    created_at DATETIME NOT NULL, curve JSON NOT NULL, plot_path TEXT
);
CREATE INDEX ix_calibrations_material_model ON calibrations (material, model_id);
INSERT INTO frames (source_path, sha256, size_bytes, material, status, processed_at)
    VALUES ('/acq/old.tif', 'cd', 123, 'Au', 'done', '2024-05-01 10:00:00.000000');
INSERT INTO calibrations (material, model_id, threshold, precision, recall, dice, n_images,
    created_at, curve) VALUES ('Au', 'm0', 0.4, 0.9, 0.8, 0.85, 12,
    '2024-05-01 10:00:00.000000', '{}');
"""


V2_DUMP = Path(__file__).parent / "data" / "temseg_schema_v2.sql"
V2_PG_DUMP = Path(__file__).parent / "data" / "temseg_schema_v2_postgresql.sql"


@pytest.fixture
def engine(db_url: str):
    """An engine on a new database: SQLite file, then PostgreSQL (``db_url``)."""
    eng = store.connect(db_url)
    yield eng
    eng.dispose()


def _particles():
    mask = np.zeros((64, 64), np.uint8)
    mask[4:10, 5:12] = 1
    mask[40:64, 50:60] = 1
    return find_particles(mask, pixel_nm=0.05)


def test_connect_creates_schema_with_wal_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    eng = store.connect(f"sqlite:///{path}", busy_timeout_ms=1234)
    try:
        assert path.is_file()
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
            tables = set(inspect(conn).get_table_names())
            version = conn.execute(text("SELECT version FROM schema_info")).scalars().all()
        assert {"frames", "particles", "models", "calibrations", "schema_info"} <= tables
        assert version == [store.SCHEMA_VERSION]
    finally:
        eng.dispose()
    # Reopening an existing current database changes nothing.
    store.connect(path).dispose()


def test_connect_without_create_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no temseg database"):
        store.connect(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_record_frame_is_idempotent_and_keeps_particles(engine) -> None:
    particles = _particles()
    received = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields = dict(source_path="/acq/a.tif", sha256=SHA, size_bytes=4096, status="done")
    frame_id = store.record_frame(
        engine,
        **fields,
        material="Au",
        model_id="m1",
        threshold=0.5,
        n_particles=len(particles),
        area_fraction=0.1,
        height=64,
        width=64,
        pixel_nm=0.05,
        seq=7,
        received_at=received,
        latency_ms=42.0,
        backend="torch",
        particles=particles,
    )
    assert store.is_recorded(engine, "/acq/a.tif", SHA)
    assert not store.is_recorded(engine, "/acq/a.tif", "00" * 32)
    again = store.record_frame(
        engine, **fields, model_id="m1", material="CdSe", particles=particles[:1]
    )
    assert again == frame_id

    record = store.get_frame(engine, frame_id)
    assert record is not None
    assert record.material == "Au"  # the second call wrote nothing
    assert record.particles == tuple(particles)
    assert record.received_at == received
    assert record.processed_at.tzinfo is not None
    assert (record.seq, record.latency_ms, record.backend) == (7, 42.0, "torch")
    assert record.instrument is None
    assert store.recorded_paths(engine) == {("/acq/a.tif", SHA)}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM frames")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM particles")).scalar() == len(particles)

    # Same path, new content: a new frame.
    other = store.record_frame(engine, **{**fields, "sha256": "ef" * 32, "status": "failed"})
    assert other != frame_id
    assert store.get_frame(engine, other).status == "failed"  # type: ignore[union-attr]
    assert store.get_frame(engine, 999) is None


@pytest.mark.parametrize("paramstyle", ["qmark", "named", "numeric"])
def test_particles_recorded_with_each_parameter_style(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, paramstyle: str
) -> None:
    real_create_engine = schema.create_engine
    monkeypatch.setattr(
        schema, "create_engine", lambda url: real_create_engine(url, paramstyle=paramstyle)
    )
    eng = store.connect(tmp_path / "styles.db")
    try:
        assert eng.dialect.paramstyle == paramstyle
        mask = np.zeros((64, 64), np.uint8)
        mask[0:5, 0:5] = mask[20:30, 20:25] = 1  # one on the border, one inside
        for pixel_nm in (0.05, None):  # nm values present and missing
            particles = find_particles(mask, pixel_nm=pixel_nm)
            frame_id = store.record_frame(
                eng,
                source_path=f"/acq/{pixel_nm}.tif",
                sha256=SHA,
                size_bytes=1,
                status="done",
                particles=particles,
            )
            record = store.get_frame(eng, frame_id)
            assert record is not None and record.particles == tuple(particles)
            assert [p.touches_border for p in record.particles] == [True, False]
    finally:
        eng.dispose()


def test_record_frame_rejects_bad_input(engine) -> None:
    fields = dict(source_path="/acq/a.tif", sha256=SHA, size_bytes=1)
    with pytest.raises(ValueError, match="status"):
        store.record_frame(engine, **fields, status="ok")
    with pytest.raises(ValueError, match="timezone"):
        store.record_frame(engine, **fields, status="done", received_at=datetime(2025, 1, 1))
    assert store.recorded_paths(engine) == set()


def test_locked_database_raises_operational_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    eng = store.connect(path, busy_timeout_ms=50)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="locked"):
            store.record_frame(eng, source_path="/a", sha256=SHA, size_bytes=1, status="done")
        assert store.recorded_paths(eng) == set()  # WAL: readers do not wait for the writer
        holder.execute("ROLLBACK")
        store.record_frame(eng, source_path="/a", sha256=SHA, size_bytes=1, status="done")
        assert store.is_recorded(eng, "/a", SHA)
    finally:
        holder.close()
        eng.dispose()


def test_models_promote_keeps_exactly_one_active(engine) -> None:
    assert store.active_model(engine) is None and store.active_model_id(engine) is None
    store.register_model(engine, "m1", "first", "/models/m1", {"epochs": 3})
    store.register_model(engine, "m2", "second", "/models/m2", {})
    store.register_model(engine, "m1", "first", "/models/m1", {"epochs": 3})
    assert [m.model_id for m in store.list_models(engine)] == ["m1", "m2"]
    assert store.active_model(engine) is None

    store.promote_model(engine, "m1")
    store.promote_model(engine, "m2")
    store.promote_model(engine, "m2")
    active = store.active_model(engine)
    assert active is not None and active.model_id == "m2" and active.path == "/models/m2"
    assert store.active_model_id(engine) == "m2"
    assert [m.active for m in store.list_models(engine)] == [False, True]
    assert store.list_models(engine)[0].metadata == {"epochs": 3}

    with pytest.raises(KeyError, match="no registered model 'nope'"):
        store.promote_model(engine, "nope")
    assert store.active_model(engine).model_id == "m2"  # type: ignore[union-attr]

    # The database itself refuses a second active row.
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE models SET active = :on"), {"on": True})


def test_latest_calibration(engine) -> None:
    assert store.latest_calibration(engine, "Au", "m1") is None
    assert store.latest_threshold(engine, "Au", "m1") is None
    common = dict(model_id="m1", precision=0.9, recall=0.8, dice=0.85, n_images=10)
    store.record_calibration(
        engine,
        material="Au",
        threshold=0.4,
        curve={"t": [0.4]},
        plot_path=None,
        criterion="max_dice",
        **common,
    )
    newest = store.record_calibration(
        engine,
        material="Au",
        threshold=0.55,
        curve={"t": [0.5, 0.55], "dice": [0.8, 0.85]},
        plot_path="/plots/au.png",
        criterion="max_dice",
        **common,
    )
    store.record_calibration(
        engine,
        material="CdSe",
        threshold=0.3,
        curve={},
        plot_path=None,
        criterion="max_dice",
        **common,
    )
    latest = store.latest_calibration(engine, "Au", "m1")
    assert latest is not None
    assert (latest.id, latest.threshold, latest.plot_path) == (newest, 0.55, "/plots/au.png")
    assert latest.curve == {"t": [0.5, 0.55], "dice": [0.8, 0.85]}
    assert store.latest_calibration(engine, "Au", "m2") is None
    assert store.latest_threshold(engine, "Au", "m1") == 0.55  # the newest, not the first
    assert store.latest_threshold(engine, "CdSe", "m1") == 0.3
    assert store.latest_threshold(engine, "Au", "m2") is None
    with pytest.raises(ValueError, match="threshold"):
        store.record_calibration(
            engine,
            material="Au",
            threshold=1.5,
            curve={},
            plot_path=None,
            criterion="max_dice",
            **common,
        )


def test_status_summary_counts_and_window(engine) -> None:
    now = datetime.now(UTC)
    for i, (material, status, latency) in enumerate(
        [("Au", "done", 10.0), ("Au", "done", 30.0), ("Au", "failed", None), ("CdSe", "done", 20.0)]
    ):
        store.record_frame(
            engine,
            source_path=f"/acq/{i}.tif",
            sha256=SHA,
            size_bytes=1,
            status=status,
            material=material,
            latency_ms=latency,
            error="bad TIFF" if status == "failed" else None,
        )
    summary = store.status_summary(engine, window_minutes=5, now=now + timedelta(seconds=1))
    assert summary["total"] == 4
    assert summary["by_status"] == {"done": 3, "failed": 1}
    assert summary["by_material"] == {"Au": {"done": 2, "failed": 1}, "CdSe": {"done": 1}}
    assert summary["by_instrument"] == {"?": {"done": 3, "failed": 1}}
    assert summary["last_frame"]["source_path"] == "/acq/3.tif"
    assert summary["window_frames"] == 4
    assert summary["frames_per_minute"] == pytest.approx(0.8)
    assert summary["mean_latency_ms"] == pytest.approx(20.0)
    later = store.status_summary(engine, window_minutes=5, now=now + timedelta(minutes=30))
    assert later["window_frames"] == 0 and later["mean_latency_ms"] is None


def test_upgrade_from_version_1(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_DDL)
    eng = store.connect(path)
    try:
        with eng.connect() as conn:
            assert (
                conn.execute(text("SELECT version FROM schema_info")).scalar()
                == store.SCHEMA_VERSION
            )
            columns = {c["name"] for c in inspect(conn).get_columns("frames")}
        assert {"latency_ms", "backend"} <= columns
        # Old rows survive and new columns work.
        assert store.is_recorded(eng, "/acq/old.tif", "cd")
        old = store.latest_calibration(eng, "Au", "m0")
        assert old is not None and old.criterion == "unspecified" and old.n_images == 12
        new_id = store.record_frame(
            eng,
            source_path="/acq/new.tif",
            sha256=SHA,
            size_bytes=1,
            status="done",
            latency_ms=5.0,
            backend="onnxruntime",
            particles=_particles(),
        )
        assert store.get_frame(eng, new_id).backend == "onnxruntime"  # type: ignore[union-attr]
    finally:
        eng.dispose()


def test_refuses_newer_and_unknown_schemas(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    store.connect(newer).dispose()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE schema_info SET version = ?", (store.SCHEMA_VERSION + 1,))
    with pytest.raises(store.SchemaError, match="newer than this temseg"):
        store.connect(newer)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE frames (x INTEGER)")
    with pytest.raises(store.SchemaError, match="not a temseg database"):
        store.connect(foreign)
    with sqlite3.connect(foreign) as conn:  # untouched
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["frames"]

    zero = tmp_path / "zero.db"
    with sqlite3.connect(zero) as conn:
        conn.executescript(
            "CREATE TABLE schema_info (version INTEGER); INSERT INTO schema_info VALUES (0);"
        )
    with pytest.raises(store.SchemaError, match="unknown database schema version 0"):
        store.connect(zero)


def test_concurrent_writers_and_readers(db_url: str) -> None:
    engines = [store.connect(db_url) for _ in range(2)]
    errors: list[BaseException] = []
    ids: dict[int, int] = {}

    def work(k: int) -> None:
        try:
            for i in range(30):
                frame_id = store.record_frame(
                    engines[k % 2],
                    source_path=f"/acq/{i}.tif",
                    sha256=SHA,
                    size_bytes=1,
                    status="done",
                    particles=_particles(),
                )
                assert ids.setdefault(i, frame_id) == frame_id
                store.status_summary(engines[(k + 1) % 2])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(store.recorded_paths(engines[0])) == 30
        with engines[1].connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM particles")).scalar() == 30 * 2
    finally:
        for engine in engines:
            engine.dispose()


def test_a_file_has_one_result_per_model(engine) -> None:
    fields = dict(sha256=SHA, size_bytes=10, status="done", particles=_particles())
    live = store.record_frame(
        engine, source_path="/acq/a.tif", model_id="m1", instrument="titan", **fields
    )
    assert store.record_frame(engine, source_path="/acq/a.tif", model_id="m1", **fields) == live
    # Another model: a second result for the same file.
    second = store.record_frame(engine, source_path="/acq/a.tif", model_id="m2", **fields)
    assert second != live
    # The same content copied elsewhere is a row of its own, as before version 3 ...
    copy = store.record_frame(engine, source_path="/archive/a.tif", model_id="m1", **fields)
    assert copy not in (live, second)
    # ... and whether a model has work left on it is asked by content.
    assert store.result_id(engine, SHA, "m1") == live
    assert store.result_id(engine, SHA, "m2") == second
    assert store.result_id(engine, SHA, "m3") is None
    assert store.recorded_contents(engine, "m2") == {SHA}
    assert store.recorded_contents(engine, "m3") == set()
    assert store.get_frame(engine, live).instrument == "titan"  # type: ignore[union-attr]
    # Failures before any model ran are kept once per file.
    failed = dict(sha256="ee" * 32, size_bytes=1, status="failed", error="bad")
    one = store.record_frame(engine, source_path="/acq/x.tif", **failed)
    assert store.record_frame(engine, source_path="/acq/x.tif", **failed) == one
    assert store.record_frame(engine, source_path="/acq/y.tif", **failed) != one
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM frames")).scalar() == 5
        assert conn.execute(text("SELECT count(*) FROM particles")).scalar() == 3 * 2
    summary = store.status_summary(engine)
    assert summary["by_instrument"] == {"?": {"done": 2, "failed": 2}, "titan": {"done": 1}}
    assert summary["by_model"] == {"?": {"failed": 2}, "m1": {"done": 2}, "m2": {"done": 1}}


def test_the_database_refuses_a_second_row_for_a_result(engine) -> None:
    """Writers that bypass record_frame's check still cannot duplicate a result."""
    fields = dict(sha256=SHA, size_bytes=1, status="done", processed_at=datetime.now(UTC))
    table = FrameRow.__table__
    with engine.begin() as conn:
        conn.execute(table.insert(), {"source_path": "/a", "model_id": "m1", **fields})
        conn.execute(table.insert(), {"source_path": "/a", "model_id": "m2", **fields})
        conn.execute(table.insert(), {"source_path": "/a", "model_id": None, **fields})
    for model_id in ("m1", None):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(table.insert(), {"source_path": "/a", "model_id": model_id, **fields})


def _schema_shape(engine) -> dict[str, object]:
    """Columns (name, nullability) and index definitions of every table."""
    with engine.connect() as conn:
        found = inspect(conn)
        return {
            table: (
                [(c["name"], c["nullable"]) for c in found.get_columns(table)],
                sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in found.get_indexes(table)
                ),
                sorted(u["name"] or "" for u in found.get_unique_constraints(table)),
            )
            for table in sorted(found.get_table_names())
        }


def test_upgrade_from_version_2_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V2_DUMP.read_text())
        before = conn.execute("SELECT * FROM frames ORDER BY id").fetchall()
        particles_before = conn.execute("SELECT * FROM particles ORDER BY id").fetchall()
    assert len(before) == 3 and len(particles_before) == 3
    eng = store.connect(path)
    fresh = store.connect(tmp_path / "fresh.db")
    try:
        with eng.connect() as conn:
            assert (
                conn.execute(text("SELECT version FROM schema_info")).scalar()
                == store.SCHEMA_VERSION
            )
            after = conn.execute(text("SELECT * FROM frames ORDER BY id")).all()
            particles_after = conn.execute(text("SELECT * FROM particles ORDER BY id")).all()
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        # Every row and id kept, the new columns empty (a single frame each, its pixel
        # size on both axes); particles still belong to their frames.
        assert [tuple(r)[: len(before[0])] for r in after] == before
        assert {r.instrument for r in after} == {None}
        assert {(r.frame_index, r.n_frames) for r in after} == {(0, 1)}
        assert all(r.pixel_nm_y == r.pixel_nm_x == r.pixel_nm for r in after)
        assert [tuple(r) for r in particles_after] == particles_before
        assert _schema_shape(eng) == _schema_shape(fresh)
        first = store.get_frame(eng, 1)
        assert first is not None and first.n_particles == len(first.particles) == 2
        # Old rows keep their keys; the file can now have a second model's result.
        assert store.result_id(eng, "aa" * 32, "m2") == 1
        same = dict(source_path="/acq/copy/a.tif", sha256="aa" * 32, size_bytes=1000)
        assert store.record_frame(eng, **same, status="done", model_id="m2") == 2
        new = store.record_frame(eng, **same, status="done", model_id="m3", instrument="titan")
        assert new == 4
        failed = dict(source_path="/acq/Au/broken.tif", sha256="bb" * 32, size_bytes=10)
        assert store.record_frame(eng, **failed, status="failed", error="again") == 3
        assert store.active_model_id(eng) == "m2"
        assert store.latest_threshold(eng, "Au", "m2") == 0.45
    finally:
        eng.dispose()
        fresh.dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_postgresql_url_without_driver_uses_psycopg(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    eng = store.connect(plain)
    try:
        assert eng.url.drivername == "postgresql+psycopg"
        assert eng.pool._pre_ping  # type: ignore[attr-defined]
    finally:
        eng.dispose()


def test_connect_without_create_refuses_empty_server_database(pg_url: str) -> None:
    with pytest.raises(FileNotFoundError, match="no temseg database"):
        store.connect(pg_url, create=False)
    store.connect(pg_url).dispose()
    store.connect(pg_url, create=False).dispose()


def test_processes_starting_together_create_the_schema_once(pg_url: str) -> None:
    # Separate processes, released at once on an empty database: without the
    # advisory lock two of them create the same tables and one fails.
    code = (
        "import sys, time; from temseg import store\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "store.connect(sys.argv[1]).dispose(); print('ok')\n"
    )
    start_at = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg_url, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-800:] for _, err in outcomes]
    eng = store.connect(pg_url, create=False)
    try:
        with eng.connect() as conn:
            assert conn.execute(text("SELECT version FROM schema_info")).scalars().all() == [
                store.SCHEMA_VERSION
            ]
    finally:
        eng.dispose()


def _record_until_done(engine, i: int, model_id: str) -> int:
    """Record frame ``i``, retrying on OperationalError as the daemon does (bounded)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return store.record_frame(
                engine,
                source_path=f"/acq/{i:04d}.tif",
                sha256=f"{i:064x}",
                size_bytes=1,
                status="done",
                model_id=model_id,
                particles=_particles(),
            )
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_server_restart_during_a_burst_loses_and_duplicates_nothing(
    pg_server: pgkit.PgServer, pg_url: str
) -> None:
    if pg_server.data is None:
        pytest.skip("an external server (TEMSEG_TEST_POSTGRES_URL) is not restarted by tests")
    n = 300
    engine = store.connect(pg_url)
    errors: list[BaseException] = []
    progress = threading.Event()
    done_ids: dict[int, int] = {}

    def burst(k: int) -> None:
        try:
            for i in range(k, n, 2):
                done_ids[i] = _record_until_done(engine, i, "m1")
                if len(done_ids) > n // 4:
                    progress.set()
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=burst, args=(k,)) for k in range(2)]
    try:
        for writer in writers:
            writer.start()
        assert progress.wait(60)
        pg_server.restart("immediate")  # connections cut mid-transaction, as in a crash
        for writer in writers:
            writer.join(120)
        assert errors == []
        assert len(done_ids) == n and len(set(done_ids.values())) == n
        # Recording everything once more writes nothing new.
        assert [_record_until_done(engine, i, "m1") for i in range(n)] == [
            done_ids[i] for i in range(n)
        ]
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT sha256, count(*) FROM frames GROUP BY sha256")).all()
            n_particles = conn.execute(text("SELECT count(*) FROM particles")).scalar()
        assert len(rows) == n and {count for _, count in rows} == {1}
        assert n_particles == 2 * n
    finally:
        engine.dispose()


def test_upgrade_to_frame_index_keeps_rows_and_particles(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_DDL)
        conn.execute("UPDATE frames SET pixel_nm = 0.25")
        conn.execute(
            "INSERT INTO particles (frame_id, label, area_px, equiv_diameter_px, centroid_y, "
            "centroid_x, bbox_y0, bbox_x0, bbox_y1, bbox_x1, touches_border) "
            "VALUES (1, 1, 12, 3.9, 5.0, 6.0, 4, 5, 8, 9, 0)"
        )
    eng = store.connect(path)
    try:
        old = store.get_frame(eng, 1)
        assert old is not None
        assert (old.frame_index, old.n_frames, old.pixel_nm_y, old.pixel_nm_x) == (0, 1, 0.25, 0.25)
        assert store.recorded_frames(eng, "/acq/old.tif", "cd") == ({0}, 1)
        assert [p.area_px for p in old.particles] == [12]
        assert store.is_recorded(eng, "/acq/old.tif", "cd", frame_index=0)
        assert not store.is_recorded(eng, "/acq/old.tif", "cd", frame_index=1)
        # frames of one stack are separate rows; each frame stays idempotent
        ids = [
            store.record_frame(
                eng,
                source_path="/acq/stack.mrc",
                sha256=SHA,
                size_bytes=10,
                status="done",
                frame_index=i,
                n_frames=3,
                pixel_nm_yx=(0.2, 0.1),
                particles=_particles(),
            )
            for i in (0, 1, 1)
        ]
        assert ids[0] != ids[1] == ids[2] and ids[0] > 1
        assert store.recorded_frames(eng, "/acq/stack.mrc", SHA) == ({0, 1}, 3)  # frame 2 to do
        assert store.recorded_frames(eng, "/acq/other.mrc", SHA) == (set(), None)
        second = store.get_frame(eng, ids[1])
        assert second is not None
        assert (second.frame_index, second.pixel_nm_y, second.pixel_nm_x) == (1, 0.2, 0.1)
        assert len(second.particles) == len(_particles())
        # deleting a frame still cascades to its particles on the rebuilt tables
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("DELETE FROM frames WHERE id = 1")
            assert conn.execute("SELECT COUNT(*) FROM particles WHERE frame_id = 1").fetchone() == (
                0,
            )
    finally:
        eng.dispose()


def test_upgrade_3_to_4_on_each_server(db_url: str) -> None:
    eng = store.connect(db_url)
    store.record_frame(
        eng, source_path="/acq/a.mrc", sha256=SHA, size_bytes=1, status="done", model_id="m1",
        pixel_nm=0.3,
    )  # fmt: skip
    with eng.begin() as conn:  # back to version 3, as that version left it
        for index in ("uq_frames_result", "uq_frames_modelless"):
            conn.execute(text(f"DROP INDEX {index}"))
        for column in ("frame_index", "n_frames", "pixel_nm_y", "pixel_nm_x"):
            conn.execute(text(f"ALTER TABLE frames DROP COLUMN {column}"))
        conn.execute(
            text("CREATE UNIQUE INDEX uq_frames_result ON frames (source_path, sha256, model_id)")
        )
        conn.execute(
            text(
                "CREATE UNIQUE INDEX uq_frames_modelless ON frames (source_path, sha256) "
                "WHERE model_id IS NULL"
            )
        )
        conn.execute(text("UPDATE schema_info SET version = 3"))
    eng.dispose()
    eng = store.connect(db_url)
    try:
        old = store.get_frame(eng, 1)
        assert old is not None
        assert (old.frame_index, old.n_frames, old.pixel_nm_y, old.pixel_nm_x) == (0, 1, 0.3, 0.3)
        frame = dict(source_path="/acq/a.mrc", sha256=SHA, size_bytes=1, status="done")
        second = store.record_frame(eng, **frame, model_id="m1", frame_index=1, n_frames=2)
        assert second != 1 and store.result_id(eng, SHA, "m1", frame_index=1) == second
        table = FrameRow.__table__
        row = {**frame, "model_id": "m1", "frame_index": 1, "processed_at": datetime.now(UTC)}
        with pytest.raises(IntegrityError), eng.begin() as conn:  # the database's own key
            conn.execute(table.insert(), row)
    finally:
        eng.dispose()


def test_upgrade_from_version_2_on_postgresql(pg_server: pgkit.PgServer, pg_url: str) -> None:
    raw = create_engine(pg_url)
    try:
        with raw.begin() as conn:
            conn.exec_driver_sql(V2_PG_DUMP.read_text())
    finally:
        raw.dispose()
    eng = store.connect(pg_url)
    try:
        with eng.connect() as conn:
            assert conn.execute(text("SELECT version FROM schema_info")).scalar() == 4
            assert conn.execute(text("SELECT count(*) FROM frames")).scalar() == 3
        first = store.get_frame(eng, 1)
        assert first is not None and len(first.particles) == 1 and first.instrument is None
        same = dict(source_path="/acq/copy/a.tif", sha256="a" * 64, size_bytes=1000)
        assert store.record_frame(eng, **same, status="done", model_id="m2") == 2
        new = store.record_frame(eng, **same, status="done", model_id="m3", instrument="titan")
        assert new == 4  # the id sequence carried on
        failed = dict(source_path="/acq/Au/broken.tif", sha256="b" * 64, size_bytes=10)
        assert store.record_frame(eng, **failed, status="failed", error="again") == 3
        assert store.latest_threshold(eng, "Au", "m2") == 0.45
        upgraded = _schema_shape(eng)
        with pytest.raises(IntegrityError), eng.begin() as conn:  # the new key holds
            conn.execute(
                text(
                    "INSERT INTO frames (source_path, sha256, size_bytes, status, model_id, "
                    "processed_at) VALUES ('/acq/copy/a.tif', :sha, 1, 'done', 'm2', now())"
                ),
                {"sha": "a" * 64},
            )
    finally:
        eng.dispose()
    fresh_url = pg_server.create_database()
    try:
        fresh = store.connect(fresh_url)
        try:
            assert upgraded == _schema_shape(fresh)
        finally:
            fresh.dispose()
    finally:
        pg_server.drop_database(fresh_url)
