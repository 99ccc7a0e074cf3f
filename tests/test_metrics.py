"""Prometheus metrics: scraped over real HTTP on 127.0.0.1, matched with the frames written."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from framekit import frame_rows, write_renamed
from prometheus_client.parser import text_string_to_metric_families
from test_daemon import tiff_bytes

from temseg.config import ConfigError, Settings
from temseg.daemon import Daemon


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``base_url/metrics``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def finished(daemon: Daemon, frames: int, timeout_s: float = 120.0) -> bool:
    """Wait until ``frames`` frames were published or failed, and nothing is pending."""
    deadline = time.monotonic() + timeout_s
    while daemon.stats.published < frames and time.monotonic() < deadline:
        time.sleep(0.05)
    return daemon.wait_idle(max(0.0, deadline - time.monotonic()))


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_counters_match_the_frames_written(make_daemon: Any, acq: Path, db_path: Path) -> None:
    daemon = make_daemon()
    assert daemon.metrics_url is not None and daemon.metrics_url.startswith("http://127.0.0.1:")
    written = {"Au": 3, "CdSe": 2}
    seed = 0
    for material, n in written.items():
        for _ in range(n):
            write_renamed(acq / f"f{seed:02d}.tif", tiff_bytes(seed, material=material))
            seed += 1
    write_renamed(acq / "broken.tif", b"not a tiff at all")
    assert finished(daemon, 6)

    samples = scrape(daemon.metrics_url)
    rows = frame_rows(db_path)
    assert len(rows) == 6
    for material, n in written.items():
        key = ("temseg_frames_total", (("material", material), ("status", "published")))
        assert (
            samples[key]
            == n
            == sum(r["material"] == material and r["status"] == "done" for r in rows)
        )
    failed = [r for r in rows if r["status"] != "done"]
    assert len(failed) == 1
    assert samples[("temseg_frames_total", (("material", "Au"), ("status", "failed")))] == 1
    assert samples[("temseg_errors_total", (("reason", "read"),))] == 1
    assert samples[("temseg_published_total", ())] == 5 == daemon.stats.done
    assert samples[("temseg_frame_latency_seconds_count", ())] == 6
    for stage in ("read", "infer", "segment"):
        assert samples[("temseg_stage_seconds_count", (("stage", stage),))] == 5
    assert samples[("temseg_stage_seconds_sum", (("stage", "infer"),))] > 0
    assert samples[("temseg_queue_depth", ())] == 0
    assert samples[("temseg_frames_in_flight", ())] == 0
    assert samples[("temseg_seconds_behind", ())] == 0
    assert samples[("temseg_stream_subscribers", ())] == 0
    assert samples[("temseg_stream_refused_total", ())] == 0
    model = daemon.model
    info = [k for k in samples if k[0] == "temseg_model_info"]
    assert info == [
        (
            "temseg_model_info",
            tuple(
                sorted(
                    {
                        "model_id": model.model_id,
                        "backend": model.engine.name,
                        "device": model.engine.device,
                        "source": model.source,
                    }.items()
                )
            ),
        )
    ]
    by_material = {r["material"]: r["threshold"] for r in rows if r["status"] == "done"}
    for material, threshold in by_material.items():
        assert samples[("temseg_threshold", (("material", material),))] == pytest.approx(threshold)
    assert get(daemon.metrics_url + "/healthz") == 200
    assert get(daemon.metrics_url + "/readyz") == 200
    assert get(daemon.metrics_url + "/nothing") == 404


def test_daemons_in_one_process_keep_their_own_counters(
    make_daemon: Any, acq: Path, tmp_path: Path
) -> None:
    first = make_daemon()
    other_acq = tmp_path / "other"
    other_acq.mkdir()
    second = make_daemon(watch=other_acq, db=str(tmp_path / "other.db"))
    write_renamed(acq / "a.tif", tiff_bytes(1, material="Au"))
    assert finished(first, 1) and second.wait_idle(60)
    key = ("temseg_frames_total", (("material", "Au"), ("status", "published")))
    assert scrape(first.metrics_url)[key] == 1
    assert key not in scrape(second.metrics_url)


def test_metrics_off_serves_nothing_and_stops_cleanly(make_daemon: Any) -> None:
    daemon = make_daemon(metrics="off")
    assert daemon.metrics_url is None
    assert daemon.healthy()


def test_metrics_endpoint_is_loopback_by_default_and_checked(acq: Path, tmp_path: Path) -> None:
    assert Settings().metrics == "127.0.0.1:9557"
    for bad in ("9557", "localhost:http", "127.0.0.1:70000", ":9557"):
        with pytest.raises(ConfigError, match="metrics"):
            Daemon(Settings(watch=acq, db=str(tmp_path / "t.db"), metrics=bad))


def test_a_port_in_use_is_one_clear_error(make_daemon: Any, acq: Path, tmp_path: Path) -> None:
    first = make_daemon()
    taken = first.metrics_url.removeprefix("http://")
    daemon = Daemon(
        Settings(watch=acq, db=str(tmp_path / "t2.db"), publish="tcp://127.0.0.1:0", metrics=taken)
    )
    with pytest.raises(OSError, match=f"cannot serve metrics on {taken}"):
        daemon.start()
