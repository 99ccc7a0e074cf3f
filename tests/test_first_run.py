"""The errors a newcomer meets first: one line naming the file or setting and the fix."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from temseg.cli import app
from temseg.config import ConfigError, load_settings
from temseg.model.bundle import default_model_path, load_bundle, save_bundle
from temseg.store import DatabaseError, active_model, connect, list_models, register_model

REPO = Path(__file__).resolve().parents[1]


def one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- settings ---------------------------------------------------------------------------


def test_unknown_toml_key_suggests_the_setting_and_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "temseg.toml"
    config.write_text('watch = "/data"\nqueue_sise = 8\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    message = str(info.value)
    assert str(config) in message and "'queue_sise'" in message
    assert "did you mean 'queue_size'?" in message


def test_wrong_type_in_toml_names_the_file_and_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "temseg.toml"
    config.write_text('queue_size = "many"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    assert str(config) in str(info.value) and "'queue_size'" in str(info.value)
    config.write_text("patterns = 5\n")
    with pytest.raises(ConfigError, match="expected a list of strings") as info:
        load_settings(config, environ={})
    assert str(config) in str(info.value)
    config.write_text("threads = 2.5\n")
    with pytest.raises(ConfigError, match="whole number"):
        load_settings(config, environ={})


def test_unknown_temseg_variable_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    env = {"TEMSEG_QUEUE_SIZ": "8", "TEMSEG_CONFIG_FILE": "x", "TEMSEG_FAULT_POINT": "read:1"}
    with caplog.at_level(logging.WARNING, logger="temseg.config"):
        settings = load_settings(environ=env)
    assert settings.queue_size == 16
    warned = [r.getMessage() for r in caplog.records]
    assert any("TEMSEG_QUEUE_SIZ" in m and "did you mean 'TEMSEG_QUEUE_SIZE'" in m for m in warned)
    assert any("TEMSEG_CONFIG_FILE" in m for m in warned)
    assert not any("TEMSEG_FAULT_POINT" in m for m in warned)


def test_publish_without_scheme_is_one_line_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "acq").mkdir()
    result = CliRunner().invoke(
        app,
        ["daemon", "--watch", str(tmp_path / "acq"), "--db", str(tmp_path / "t.db"),
         "--publish", "5557"],
    )  # fmt: skip
    assert result.exit_code == 2
    line = one_line_error(result.output)
    assert "did you mean tcp://127.0.0.1:5557?" in line
    assert "CURVE" not in result.output


# --- subscribe ----------------------------------------------------------------------


def test_subscribe_connect_without_scheme_is_one_line() -> None:
    result = CliRunner().invoke(app, ["subscribe", "--connect", "127.0.0.1:5557"])
    assert result.exit_code == 2
    assert "did you mean tcp://127.0.0.1:5557?" in one_line_error(result.output)


def test_subscribe_says_where_it_waits_and_hints_at_curve_on_timeout() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "temseg", "subscribe", "--connect", url, "--timeout", "0.3"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    first, *_, last = done.stderr.strip().splitlines()
    assert f"connecting to {url}" in first and "waiting" in first
    assert "no message for 0.3 s" in last and "--curve-server-key" in last


# --- databases ----------------------------------------------------------------------


def test_database_in_a_missing_folder_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    with pytest.raises(DatabaseError, match="does not exist") as info:
        connect(missing / "x.db")
    assert str(missing) in str(info.value)
    assert not missing.exists() and not missing.parent.exists()


def test_unopenable_database_names_the_file_and_the_cause(tmp_path: Path) -> None:
    folder = tmp_path / "x.db"
    folder.mkdir()  # a folder where the file should be: SQLite cannot open it
    with pytest.raises(DatabaseError) as info:
        connect(folder)
    assert str(folder) in str(info.value) and "a folder, not a file" in str(info.value)


def test_train_with_unusable_db_fails_before_training_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    bad_db = tmp_path / "missing" / "t.db"
    result = CliRunner().invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--db", str(bad_db)]
    )
    assert result.exit_code == 1
    line = one_line_error(result.output)
    assert str(bad_db) in line and "does not exist" in line
    assert not (tmp_path / "m").exists()


def test_registering_into_unusable_db_says_where_the_bundle_went(tmp_path: Path) -> None:
    from temseg.trainer.export import register_bundle

    bundle = load_bundle(save_bundle(load_bundle(None).model, {}, tmp_path / "bundle"))
    with pytest.raises(DatabaseError) as info:
        register_bundle(str(tmp_path / "missing" / "t.db"), bundle)
    assert f"written to {bundle.path}" in str(info.value) and "not registered" in str(info.value)


def test_calibrate_with_unusable_db_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    bad_db = tmp_path / "missing" / "t.db"
    result = CliRunner().invoke(
        app, ["calibrate", "--material", "Au", "--data", str(data), "--db", str(bad_db)]
    )
    assert result.exit_code == 1
    assert str(bad_db) in one_line_error(result.output)


# --- models -------------------------------------------------------------------------


def test_bundled_model_is_listed_and_can_be_promoted_back(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    engine = connect(db)
    model = load_bundle(None).model
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # other weights, so another model id
    other = save_bundle(model, {"name": "other"}, tmp_path / "o")
    other_id = load_bundle(other).model_id
    register_model(engine, other_id, "other", str(other), {})
    runner = CliRunner()
    assert runner.invoke(app, ["models", "promote", other_id, "--db", str(db)]).exit_code == 0

    bundled_id = load_bundle(None).model_id
    listing = runner.invoke(app, ["models", "list", "--db", str(db)])
    assert listing.exit_code == 0 and bundled_id in listing.output
    back = runner.invoke(app, ["models", "promote", bundled_id, "--db", str(db)])
    assert back.exit_code == 0, back.output
    record = active_model(engine)
    assert record is not None and record.model_id == bundled_id
    assert Path(record.path) == default_model_path()
    assert len([m for m in list_models(engine) if m.model_id == bundled_id]) == 1
    engine.dispose()


def test_bundle_weights_get_the_same_mode_as_the_rest(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = save_bundle(load_bundle(None).model, {}, tmp_path / "b")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == modes["model.json"] == 0o644


# --- installation -------------------------------------------------------------------


def test_readme_install_lines_choose_cpu_or_gpu_in_the_commands() -> None:
    text = (REPO / "README.md").read_text()
    block = text.split("## Install and run", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.startswith("python3 -m pip")]
    assert any("whl/cpu" in line and "temseg demo" in line for line in commands)
    assert any("whl/cpu" not in line and "temseg demo" in line for line in commands)


def test_unit_documentation_is_installed_by_a_documented_step() -> None:
    unit = (REPO / "systemd" / "temseg.service").read_text()
    target = next(
        line.split("file://", 1)[1]
        for line in unit.splitlines()
        if line.startswith("Documentation=")
    )
    source = REPO / "docs" / Path(target).name
    assert source.is_file()
    step = f"install -D -m 0644 docs/{source.name} {target}"
    assert step in unit and step in (REPO / "README.md").read_text()
    assert "LimitNOFILE=" in unit


def test_daemon_raises_its_soft_descriptor_limit() -> None:
    script = (
        "import resource; from temseg.daemon.lifecycle import raise_file_limit; "
        "raise_file_limit(); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )

    def low_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        preexec_fn=low_limit,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 4096


def test_a_daemon_whose_database_folder_is_missing_fails_cleanly(acq: Path, tmp_path: Path) -> None:
    from temseg.config import Settings
    from temseg.daemon import Daemon

    before = sys.getswitchinterval()
    daemon = Daemon(Settings(watch=acq, db=str(tmp_path / "missing" / "t.db"), threads=1))
    with pytest.raises(DatabaseError, match="does not exist"):
        daemon.start()
    assert sys.getswitchinterval() == before  # the daemon's shortened interval was undone
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("command", ["subscribe", "view"])
def test_a_curve_key_without_its_pair_is_one_line(command: str, tmp_path: Path) -> None:
    server_key = tmp_path / "server.key"
    server_key.write_text("not read: the pair is checked first")
    result = CliRunner().invoke(
        app, [command, "--connect", "tcp://127.0.0.1:5557", "--curve-server-key", str(server_key)]
    )
    assert result.exit_code == 2
    assert one_line_error(result.output) == (
        "error: CURVE needs both --curve-server-key and --curve-client-key"
    )
