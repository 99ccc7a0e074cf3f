"""Security properties: loopback by default, CURVE through the real daemon, no unpickling,
no path escapes from metadata, a hardened systemd unit.

That the acquisition folder stays byte-identical with unchanged mtimes is
asserted by ``tests/test_daemon.py::test_frames_segmented_published_recorded_and_folder_untouched``
and, after repeated SIGKILLs, by ``test_fault_kill.py``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from faultkit import DaemonProcess, count_rows, free_port, tiff_bytes, wait_for
from framekit import frame_rows, write_renamed

from temseg.config import ConfigError, Settings
from temseg.daemon import Daemon
from temseg.daemon.rules import is_loopback_endpoint
from temseg.stream import DEFAULT_URL, Subscriber, generate_keys

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "temseg"


# ---------------------------------------------------------------- network exposure


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("tcp://127.0.0.1:5557", True),
        ("tcp://127.0.0.2:0", True),
        ("tcp://localhost:5557", True),
        ("tcp://[::1]:5557", True),
        ("tcp://lo:5557", True),
        ("ipc:///run/temseg/masks", True),
        ("tcp://*:5557", False),
        ("tcp://0.0.0.0:5557", False),
        ("tcp://[::]:5557", False),
        ("tcp://192.168.1.20:5557", False),
        ("tcp://eth0:5557", False),
        ("ws://127.0.0.1:5557", False),
    ],
)
def test_loopback_endpoints(url: str, local: bool) -> None:
    assert is_loopback_endpoint(url) is local


def test_defaults_bind_loopback_only() -> None:
    assert Settings().publish == DEFAULT_URL == "tcp://127.0.0.1:5557"
    assert is_loopback_endpoint(Settings().publish) and Settings().curve_keys is None


def test_non_loopback_without_curve_is_warned_about(
    acq: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = str(tmp_path / "t.db")
    keys = tmp_path / "keys"
    with caplog.at_level(logging.WARNING, logger="temseg.daemon"):
        Daemon(Settings(watch=acq, db=db))  # created, never started: nothing is bound
        Daemon(Settings(watch=acq, db=db, publish="tcp://0.0.0.0:5557", curve_keys=keys))
        assert "WITHOUT CURVE" not in caplog.text
        Daemon(Settings(watch=acq, db=db, publish="tcp://0.0.0.0:5557"))
    warnings = [r for r in caplog.records if "WITHOUT CURVE" in r.getMessage()]
    assert len(warnings) == 1 and "tcp://0.0.0.0:5557" in warnings[0].getMessage()


@pytest.mark.slow
def test_curve_daemon_serves_allowed_clients_only(acq: Path, tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys", clients=("alice", "mallory"))
    (keys.authorized / "mallory.key").unlink()  # access revoked
    url = f"tcp://127.0.0.1:{free_port()}"
    db = tmp_path / "state" / "temseg.db"
    db.parent.mkdir()
    daemon = DaemonProcess(
        "--watch", str(acq),
        "--db", str(db),
        "--publish", url,
        "--curve-keys", str(tmp_path / "keys"),
        "--threads", "1",
    )  # fmt: skip
    alice = Subscriber(url, curve_keys=keys.server_public, client_key=keys.client_secrets["alice"])
    mallory = Subscriber(
        url, curve_keys=tmp_path / "keys", client_key=keys.client_secrets["mallory"]
    )
    plain = Subscriber(url)
    try:
        daemon.wait_line(" ready ")
        for i in range(40):  # until alice's connection is up
            write_renamed(acq / f"probe_{i:02d}.tif", tiff_bytes(1000 + i))
            if alice.receive(timeout_ms=500) is not None:
                break
        else:
            raise AssertionError("the allowed client never received a mask")
        frames = [acq / f"frame_{i}.tif" for i in range(5)]
        for i, path in enumerate(frames):
            write_renamed(path, tiff_bytes(i))
        got: set[str] = set()
        deadline = time.monotonic() + 30
        while not got >= {str(p) for p in frames} and time.monotonic() < deadline:
            message = alice.receive(timeout_ms=100)
            if message is not None and not message.is_error:
                assert message.mask is not None
                got.add(message.header["source"])
            # Anything the others got would be a leak.
            assert mallory.receive(timeout_ms=0) is None
            assert plain.receive(timeout_ms=0) is None
        assert got >= {str(p) for p in frames}
        assert mallory.receive(timeout_ms=300) is None and plain.receive(timeout_ms=300) is None
        assert (mallory.received, plain.received) == (0, 0)
        assert daemon.terminate() == 0
    finally:
        for sub in (alice, mallory, plain):
            sub.close()
        daemon.close()
    assert count_rows(db) >= len(frames)


# ---------------------------------------------------------------- no unpickling

_PICKLE_USES = (
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"\b(c?pickle|dill|joblib|cloudpickle)\.load"), "unpickling library"),
    (re.compile(r"\bimport (c?pickle|dill|cloudpickle)\b"), "import of a pickle library"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)[^)]*\)"), "torch.load"),
)


def pickle_uses(text: str) -> list[str]:
    """What in ``text`` could unpickle data: the labels of the patterns found."""
    flat = re.sub(r"\s+", " ", text)
    return [label for pattern, label in _PICKLE_USES if pattern.search(flat)]


def test_pickle_scanner_finds_what_it_looks_for() -> None:
    assert pickle_uses("state = torch.load(path)") == ["torch.load"]
    assert pickle_uses("torch.load(\n    path, map_location='cpu')") == ["torch.load"]
    assert pickle_uses("torch.load(path, weights_only=True)") == []
    assert pickle_uses("np.load(f, allow_pickle=True)") == ["np.load(allow_pickle=True)"]
    assert "pickle.load" in pickle_uses("import pickle\nx = pickle.loads(blob)")


#: The one module that reads pickles: ``torch.save`` archives of published networks, through
#: an unpickler that resolves only an allow-list of names (``tests/test_zoo.py`` feeds it a
#: pickle that would run code). Nothing else may import a pickle library.
ALLOW_LIST_UNPICKLER = "src/temseg/model/torch_import.py"


def test_no_pickle_loading_in_the_package() -> None:
    sources = sorted(SRC.rglob("*.py"))
    assert len(sources) > 20
    found = {str(p.relative_to(ROOT)): u for p in sources if (u := pickle_uses(p.read_text()))}
    assert found.pop(ALLOW_LIST_UNPICKLER) == ["import of a pickle library"]
    assert found == {}


def test_the_allow_list_unpickler_never_calls_plain_loading() -> None:
    source = (ROOT / ALLOW_LIST_UNPICKLER).read_text()
    assert "find_class" in source
    assert re.search(r"\bpickle\.loads?\(|torch\.load\(", source) is None


# ---------------------------------------------------------------- paths from metadata


@pytest.mark.slow
def test_metadata_cannot_escape_folders_or_inject_materials(
    make_daemon, acq: Path, db_path: Path, tmp_path: Path
) -> None:
    masks = tmp_path / "masks"
    # A sidecar naming a mask path and a material that climb out of their folders.
    escaping = acq / "escaping.tif"
    (acq / "escaping.json").write_text(
        json.dumps({"material": "../../etc", "mask_path": "../../../escaped.tif"})
    )
    write_renamed(escaping, tiff_bytes(1))
    # Mask paths in the ImageDescription JSON (absolute) and the sidecar (relative), with a
    # valid material: the mask goes where the daemon puts every mask, nowhere else.
    described = acq / "sub" / "described.tif"
    described.parent.mkdir()
    buffer = io.BytesIO()
    image = np.random.default_rng(2).integers(0, 4000, (32, 32), dtype=np.uint16)
    meta = {"material": "CdSe", "mask_path": str(tmp_path / "x.tif")}
    tifffile.imwrite(buffer, image, metadata=meta)
    (acq / "sub" / "described.json").write_text(json.dumps({"mask_path": "../../escaped.tif"}))
    write_renamed(described, buffer.getvalue())
    for name, material in (("newline", "Au\nINFO forged line"), ("slash", "Au/../../x")):
        write_renamed(acq / f"{name}.tif", tiff_bytes(3, material=material))
    before = set(tmp_path.rglob("*"))
    daemon = make_daemon(masks=masks)
    assert wait_for(lambda: count_rows(db_path) >= 4, 30)
    assert daemon.wait_idle(30)
    daemon.stop()

    rows = {Path(r["source_path"]).name: r for r in frame_rows(db_path)}
    for name in ("escaping.tif", "newline.tif", "slash.tif"):
        assert rows[name]["status"] == "failed" and "not a valid name" in rows[name]["error"]
        assert rows[name]["material"] == "Au" and rows[name]["mask_path"] is None
    assert rows["described.tif"]["status"] == "done"
    assert rows["described.tif"]["material"] == "CdSe"
    assert rows["described.tif"]["mask_path"] == str(masks / "sub" / "described.tif.mask.tif")
    created = set(tmp_path.rglob("*")) - before
    state = db_path.parent
    outside = [p for p in created if not (p.is_relative_to(masks) or p.is_relative_to(state))]
    assert outside == [] and not (tmp_path / "x.tif").exists()
    for folder in (masks, masks / "sub", *masks.parents[:4], *acq.parents[:4]):
        assert not (folder / "escaped.tif").exists(), folder


def test_invalid_configured_materials_are_refused(acq: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    with pytest.raises(ConfigError, match="not a valid name"):
        Daemon(Settings(watch=acq, db=db, material="../etc"))
    with pytest.raises(ConfigError, match="not a valid name"):
        Daemon(Settings(watch=acq, db=db, folder_rules={"CdSe/**": "Cd Se"}))


# ---------------------------------------------------------------- systemd unit


def test_systemd_unit_exposure_is_ok() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = ROOT / "systemd" / "temseg.service"
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {result.stderr[-200:]}")
    exposure, rating = float(match[1]), match[2]
    assert rating in ("PERFECT", "SAFE", "OK"), (exposure, rating)
    assert exposure < 2.0, exposure
