"""``temseg view``: the live page in a real headless Chromium, its event stream, the preview."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from framekit import write_renamed
from PIL import Image
from test_daemon import tiff_bytes
from typer.testing import CliRunner

from temseg.cli import app
from temseg.stream import Subscriber
from temseg.stream.keys import generate_keys
from temseg.view.server import Viewer

PREVIEW_PX = 48
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium found (looked for " + ", ".join(BROWSERS) + "); "
        "apt-get install chromium-headless-shell"
    )


def wait_for(condition: Any, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Elements(HTMLParser):
    """Attributes and text of the elements with an ``id``."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        ident = found.get("id")
        if ident:
            self.attrs[ident] = found
            self.text.setdefault(ident, "")
        if tag not in ("img", "meta", "br", "input", "link"):
            self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("img", "meta", "br", "input", "link") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text[ident] += data


def dump_dom(browser: str, url: str, profile: Path) -> str:
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def png_shape(data_url: str | None) -> tuple[int, ...]:
    assert data_url is not None and data_url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as image:
        image.load()
        return tuple(np.asarray(image).shape)


def test_the_page_shows_the_newest_frame_and_its_image_in_chromium(
    make_daemon: Any, acq: Path, tmp_path: Path
) -> None:
    browser = chromium()
    daemon = make_daemon(send_preview_px=PREVIEW_PX)
    with Viewer(daemon.bound_url, "127.0.0.1", 0) as viewer:
        page = dump_dom(browser, viewer.url, tmp_path / "profile-before")
        before = Elements()
        before.feed(page)
        assert before.text["name"] == "waiting for the first frame"
        assert "hidden" in before.attrs["frame"]

        time.sleep(0.5)  # the subscription reaches the publisher
        names = [f"frame_{i}.tif" for i in range(3)]
        for i, name in enumerate(names):
            write_renamed(acq / name, tiff_bytes(i, material="CdSe"))
            assert wait_for(
                lambda n=name: (viewer.state.snapshot()["latest"] or {}).get("name") == n
            )

        page = dump_dom(browser, viewer.url, tmp_path / "profile-after")
    shown = Elements()
    shown.feed(page)
    assert shown.text["name"] == names[-1]  # written by the page's script, not the server
    assert shown.text["material"] == "CdSe"
    frame, overlay = shown.attrs["frame"], shown.attrs["overlay"]
    assert "hidden" not in frame and "hidden" not in overlay
    assert max(png_shape(frame["src"])[:2]) <= PREVIEW_PX
    assert png_shape(overlay["src"])[2] == 4  # RGBA
    assert int(shown.text["particles"]) == viewer.state.snapshot()["latest"]["n_particles"]


def read_event(stream: Any) -> dict[str, Any]:
    """The next ``data:`` event of an open server-sent event stream."""
    while True:
        line = stream.readline().decode()
        assert line, "the event stream ended"
        if line.startswith("data: "):
            return dict(json.loads(line[len("data: ") :]))


def test_events_bring_each_new_frame_and_the_image_comes_from_the_source_file(
    make_daemon: Any, acq: Path
) -> None:
    daemon = make_daemon()  # no preview in the messages: the viewer reads the source file
    with Viewer(daemon.bound_url, "127.0.0.1", 0) as viewer:
        time.sleep(0.5)
        with urllib.request.urlopen(viewer.url + "events", timeout=60) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            assert read_event(stream)["latest"] is None
            write_renamed(acq / "a.tif", tiff_bytes(1))
            event = read_event(stream)
            assert event["latest"]["name"] == "a.tif"
            assert png_shape(event["latest"]["image"])[:2] == (64, 64)
            write_renamed(acq / "broken.tif", b"not a tiff")
            event = read_event(stream)
            assert [e["name"] for e in event["errors"]] == ["broken.tif"]
            assert event["latest"]["name"] == "a.tif"
            assert sum(event["timeline"]["frames_per_min"]) > 0


def test_the_preview_is_an_optional_header_field(make_daemon: Any, acq: Path) -> None:
    daemon = make_daemon(send_preview_px=PREVIEW_PX)
    with Subscriber(daemon.bound_url, timeout_ms=60_000) as sub:
        time.sleep(0.5)
        write_renamed(acq / "a.tif", tiff_bytes(2))
        message = sub.receive()
    assert message is not None and not message.is_error
    preview = message.header["preview"]
    shape = png_shape("data:image/png;base64," + preview["png"])
    assert shape == tuple(preview["shape"]) and max(shape) <= PREVIEW_PX
    assert message.mask.shape == (64, 64)  # the mask part is unchanged


def test_view_refuses_a_bad_listen_address_in_one_line() -> None:
    result = CliRunner().invoke(app, ["view", "--connect", "tcp://127.0.0.1:1", "--listen", "x"])
    assert result.exit_code == 2
    assert "--listen 'x': expected HOST:PORT" in result.output


def test_the_viewer_subscribes_with_curve_keys(make_daemon: Any, acq: Path, tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys", clients=["viewer"])
    daemon = make_daemon(curve_keys=tmp_path / "keys")
    with Viewer(
        daemon.bound_url,
        "127.0.0.1",
        0,
        curve_keys=keys.server_public,
        client_key=keys.client_secrets["viewer"],
    ) as viewer:
        time.sleep(0.5)
        write_renamed(acq / "secret.tif", tiff_bytes(3))
        assert wait_for(
            lambda: (viewer.state.snapshot()["latest"] or {}).get("name") == "secret.tif"
        )


def test_the_daemon_does_not_import_the_web_framework() -> None:
    code = (
        "import sys, temseg.daemon.service, temseg.cli; "
        "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
