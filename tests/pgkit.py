"""A throwaway PostgreSQL server on 127.0.0.1 for the tests, and one empty database per test.

``TEMSEG_TEST_POSTGRES_URL`` (a ``postgresql+psycopg://`` URL of a server where
the user may create databases) is used when set; otherwise the server binaries
(``initdb``, ``pg_ctl``: on PATH, or Debian's ``/usr/lib/postgresql/*/bin``) start
a cluster in a temporary folder with ``fsync=off``. As root the server runs as
the ``postgres`` user (``pg_ctl`` refuses root). Without psycopg, binaries or a
usable user the tests that need a server skip, saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

ENV_URL = "TEMSEG_TEST_POSTGRES_URL"


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started or reached here (the message says why)."""


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A PostgreSQL server: ``url`` of its maintenance database; ``data`` is ``None``
    for an external server (one this module cannot stop or restart)."""

    url: str
    data: Path | None = None
    bin_dir: Path | None = None
    port: int = 0

    def _ctl(self, *args: str) -> None:
        assert self.data is not None and self.bin_dir is not None
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise Unavailable(f"pg_ctl {args[0]} failed: {result.stderr.strip()[-500:]}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c unix_socket_directories={self.data} -c max_connections=200"
        )
        self._ctl("-o", options, "-l", str(self.data / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def restart(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: as after a crash, connections cut) and start it again."""
        if self.data is None:
            raise Unavailable(f"the server of {ENV_URL} cannot be restarted by the tests")
        self.stop(mode)
        self.start()

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"temseg_{uuid.uuid4().hex[:12]}"
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()


def _check(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise Unavailable(f"cannot connect to {url}: {exc}") from exc
    finally:
        engine.dispose()


def start_server() -> PgServer:
    """The server of ``TEMSEG_TEST_POSTGRES_URL``, or a new one on a free loopback port."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise Unavailable("psycopg is not installed (pip install 'temseg[postgres]')") from exc
    external = os.environ.get(ENV_URL)
    if external:
        _check(external)
        return PgServer(url=external)
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise Unavailable("no PostgreSQL server binaries (pg_ctl) found")
    root = os.geteuid() == 0
    if root and shutil.which("runuser") is None:
        raise Unavailable("running as root without runuser to start the server as postgres")
    # Not under pytest's private temporary folder: the postgres user must reach it.
    data = Path(tempfile.mkdtemp(prefix="temseg-pg-")) / "data"
    data.mkdir()
    data.parent.chmod(0o755)
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    initdb += ["--no-sync", "-E", "UTF8", "--no-locale"]
    if root:
        try:
            shutil.chown(data, "postgres", "postgres")
        except (LookupError, PermissionError) as exc:
            raise Unavailable(f"cannot hand the data folder to the postgres user: {exc}") from exc
        initdb = ["runuser", "-u", "postgres", "--", *initdb]
    result = subprocess.run(initdb, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        shutil.rmtree(data.parent, ignore_errors=True)
        raise Unavailable(f"initdb failed: {result.stderr.strip()[-500:]}")
    port = _free_port()
    server = PgServer(
        url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
        data=data,
        bin_dir=bin_dir,
        port=port,
    )
    try:
        server.start()
    except Unavailable:
        shutil.rmtree(data.parent, ignore_errors=True)
        raise
    return server


def stop_server(server: PgServer) -> None:
    """Stop a server :func:`start_server` started and delete its files."""
    if server.data is None:
        return
    try:
        server.stop("immediate")
    finally:
        shutil.rmtree(server.data.parent, ignore_errors=True)


def database(server: PgServer) -> Iterator[str]:
    """Yield the URL of a new empty database, dropped afterwards."""
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)
