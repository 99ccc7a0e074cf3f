"""Publisher and subscriber over real TCP sockets on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from temseg.cli import app
from temseg.segment import find_particles
from temseg.stream import (
    Publisher,
    StreamMessage,
    Subscriber,
    encode_error_message,
    encode_mask,
    encode_mask_message,
    generate_keys,
)

ANY_PORT = "tcp://127.0.0.1:0"


def _mask(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        mask[y : y + 8, x : x + 8] = 1
    return mask


def _sync(pub: Publisher, *subs: Subscriber) -> None:
    """Publish error pings until every subscriber has one (ZeroMQ subscriptions
    take effect asynchronously), then drain the pings."""
    pending = list(subs)
    while pending:
        pub.publish_error("sync", "ping")
        pending = [s for s in pending if s.receive(timeout_ms=100) is None]
    for sub in subs:
        while sub.receive(timeout_ms=200) is not None:
            pass


def _masks_only(sub: Subscriber, timeout_ms: int = 1000) -> list[StreamMessage]:
    out = []
    while (message := sub.receive(timeout_ms=timeout_ms)) is not None:
        if not message.is_error:
            out.append(message)
    return out


@pytest.mark.parametrize("encoding", ["raw", "packbits"])
def test_pub_sub_headers_seq_and_mask_bytes(encoding: str) -> None:
    with (
        Publisher(ANY_PORT, encoding=encoding, send_probability=True) as pub,
        Subscriber(pub.bound_url, timeout_ms=2000) as sub,
    ):
        assert pub.bound_url.startswith("tcp://127.0.0.1:") and not pub.bound_url.endswith(":0")
        _sync(pub, sub)
        first_seq = pub.seq + 1
        masks = [_mask(i) for i in range(5)]
        sent = []
        for i, mask in enumerate(masks):
            fields = {
                "material": "Au" if i % 2 else "CdSe",
                "frame_id": i + 1,
                "source": f"/acq/{i}.tif",
                "particles": [p.to_dict() for p in find_particles(mask, pixel_nm=0.05)],
                "pixel_nm": 0.05,
                "timing_ms": {"read": 1.0, "infer": 2.0, "total": 3.5},
            }
            prob = mask * np.float32(0.75)
            ahead = encode_mask(mask, encoding)  # encoded on another thread, as the daemon does
            sent.append(pub.publish_mask(fields, mask if i % 2 else ahead, prob))
        error = pub.publish_error("/acq/bad.tif", "not a TIFF")
        stack_error = pub.publish_error("/acq/movie.mrc", "inference failed", frame_index=2)
        received = [sub.receive() for _ in range(7)]

    assert all(m is not None for m in received)
    messages: list[StreamMessage] = received  # type: ignore[assignment]
    assert [m.header["seq"] for m in messages] == list(range(first_seq, first_seq + 7))
    assert {m.header["run_id"] for m in messages} == {pub.run_id}
    for header, message, mask in zip(sent, messages, masks, strict=False):
        assert message.header == header
        assert message.topic == f"temseg.mask.{header['material']}"
        assert header["shape"] == [48, 64] and header["encoding"] == encoding
        assert header["probability"] == "float16"
        np.testing.assert_array_equal(message.mask, mask)
        np.testing.assert_array_equal(message.probability, mask * np.float16(0.75))
        assert message.mask is not None and message.probability is not None
        assert not message.mask.flags.writeable and not message.probability.flags.writeable
    assert messages[5].is_error and messages[5].header == error
    assert error["source"] == "/acq/bad.tif" and error["error"] == "not a TIFF"
    assert "frame_index" not in error  # the whole file failed
    assert messages[6].header == stack_error and stack_error["frame_index"] == 2
    assert sub.gaps == [] and sub.invalid == 0 and pub.dropped == 0


def test_topic_filter_and_no_probability_by_default() -> None:
    with (
        Publisher(ANY_PORT) as pub,
        Subscriber(pub.bound_url, topics=("temseg.mask.Au",)) as au,
        Subscriber(pub.bound_url) as everything,
    ):
        assert not au.tracks_gaps and everything.tracks_gaps
        mask = _mask(0)
        # Subscriptions propagate asynchronously: publish until the Au subscriber hears.
        while au.receive(timeout_ms=100) is None:
            pub.publish_mask({"material": "Au"}, mask, np.zeros(mask.shape))
        pub.publish_mask({"material": "CdSe"}, mask)
        pub.publish_mask({"material": "Au", "frame_id": 9}, mask)
        last = au.receive(timeout_ms=2000)
        assert last is not None and last.header["frame_id"] == 9
        assert last.probability is None and "probability" not in last.header
        headers = [m.header for m in _masks_only(everything, timeout_ms=300)]
        assert "CdSe" in {h["material"] for h in headers}
    # The Au subscriber skipped CdSe's seq but reports no gap: it cannot see all topics.
    assert au.gaps == [] and everything.gaps == []


def test_gap_detection_and_malformed_messages() -> None:
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    mask = _mask(1, 16, 16)

    def send(run_id: str, seq: int) -> None:
        raw.send_multipart(
            encode_mask_message({"material": "Au", "seq": seq, "run_id": run_id}, mask)
        )

    try:
        with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
            ping = 0
            while sub.receive(timeout_ms=100) is None:
                ping += 1
                raw.send_multipart(encode_error_message({"seq": ping, "run_id": "sync"}))
            for seq in (1, 2, 5, 6):
                send("run-a", seq)
            raw.send_multipart([b"temseg.mask.Au", b"not json", b""])
            send("run-b", 4)  # a restarted publisher: new sequence, no gap
            send("run-b", 5)
            send("run-a", 9)
            got = [(m.header["run_id"], m.header["seq"]) for m in _masks_only(sub, 1000)]
    finally:
        raw.close()
        ctx.term()
    assert got == [("run-a", s) for s in (1, 2, 5, 6)] + [("run-b", 4), ("run-b", 5), ("run-a", 9)]
    assert sub.gaps == [(3, 5), (7, 9)]
    assert sub.invalid == 1


def test_slow_subscriber_does_not_block_publisher() -> None:
    total = 10_000
    with (
        Publisher(ANY_PORT, send_hwm=10) as pub,
        Subscriber(pub.bound_url) as sub,
    ):
        _sync(pub, sub)
        first = pub.seq + 1
        mask = _mask(2, 64, 64)
        for i in range(total):  # nobody reads meanwhile
            pub.publish_mask({"material": "Au", "frame_id": i}, mask)
        assert pub.seq == first + total - 1
        delivered = _masks_only(sub)
    seqs = [m.header["seq"] for m in delivered]
    missed = sum(got - expected for expected, got in sub.gaps)
    assert 0 < len(delivered) < total
    assert seqs == sorted(seqs) and seqs[0] == first
    assert sub.gaps, "messages beyond the queues are dropped, and the subscriber notices"
    assert len(delivered) + missed == seqs[-1] - first + 1


def test_nodrop_publisher_counts_drops() -> None:
    total = 10_000
    with (
        Publisher(ANY_PORT, send_hwm=10, nodrop=True) as pub,
        Subscriber(pub.bound_url) as sub,
    ):
        _sync(pub, sub)
        dropped_before = pub.dropped
        mask = _mask(3, 64, 64)
        for i in range(total):
            pub.publish_mask({"material": "Au", "frame_id": i}, mask)
        delivered = _masks_only(sub)
        dropped = pub.dropped - dropped_before
        # The drops may all come after the last message delivered; one more, sent
        # once the subscriber has caught up, arrives and shows them as a gap.
        pub.publish_mask({"material": "Au", "frame_id": total}, mask)
        last = _masks_only(sub)
    assert dropped > 0 and pub.dropped - dropped_before == dropped
    assert len(delivered) + dropped == total
    assert [m.header["frame_id"] for m in last] == [total]
    assert sum(received - first for first, received in sub.gaps) == dropped


def test_bind_conflict_is_a_clear_error() -> None:
    with Publisher(ANY_PORT) as pub:
        with pytest.raises(zmq.ZMQError, match=f"cannot bind {pub.bound_url}"):
            Publisher(pub.bound_url)
    with pytest.raises(ValueError, match="encoding"):
        Publisher(ANY_PORT, encoding="zlib")


def test_curve_only_authorized_clients_receive(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys", clients=("alice", "mallory"))
    (keys.authorized / "mallory.key").unlink()  # access revoked
    with (
        Publisher(ANY_PORT, curve_keys=tmp_path / "keys") as pub,
        Subscriber(
            pub.bound_url, curve_keys=keys.server_public, client_key=keys.client_secrets["alice"]
        ) as alice,
        Subscriber(
            pub.bound_url, curve_keys=tmp_path / "keys", client_key=keys.client_secrets["mallory"]
        ) as mallory,
        Subscriber(pub.bound_url) as plain,
    ):
        _sync(pub, alice)
        # Keep publishing while the others wait: anything they got would be a leak.
        for i in range(20):
            pub.publish_mask({"material": "Au", "frame_id": i}, _mask(i))
            assert mallory.receive(timeout_ms=20) is None
            assert plain.receive(timeout_ms=20) is None
        assert len(_masks_only(alice, 1000)) == 20


def test_generate_keys_extends_and_never_overwrites(tmp_path: Path) -> None:
    first = generate_keys(tmp_path, clients=("alice",))
    server_secret = first.server_secret.read_bytes()
    assert first.server_secret.stat().st_mode & 0o777 == 0o600
    assert first.client_secrets["alice"].stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError, match="alice"):
        generate_keys(tmp_path, clients=("alice",))
    second = generate_keys(tmp_path, clients=("bob",))
    assert second.server_secret.read_bytes() == server_secret
    assert sorted(p.name for p in second.authorized.iterdir()) == ["alice.key", "bob.key"]
    with pytest.raises(ValueError, match="client name"):
        generate_keys(tmp_path, clients=("../evil",))
    with pytest.raises(FileNotFoundError, match=r"server\.key_secret"):
        Publisher(ANY_PORT, curve_keys=tmp_path / "clients")


def test_keys_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["keys", "generate", "--out", str(tmp_path / "k"), "--client", "viewer"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k" / "authorized" / "viewer.key").is_file()
    assert "viewer.key_secret" in result.output and "curve_keys" in result.output
    again = CliRunner().invoke(
        app, ["keys", "generate", "--out", str(tmp_path / "k"), "--client", "viewer"]
    )
    assert again.exit_code == 1 and "exists" in again.output


def test_subscribe_cli_prints_json_lines() -> None:
    pub = Publisher(ANY_PORT)
    stop = threading.Event()

    def publish() -> None:  # the publisher is used by this thread only
        i = 0
        while not stop.wait(0.02):
            pub.publish_mask({"material": "Au", "frame_id": i}, _mask(i, 16, 16))
            i += 1
        pub.close()

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        result = CliRunner().invoke(
            app, ["subscribe", "--connect", pub.bound_url, "--count", "3", "--timeout", "20"]
        )
    finally:
        stop.set()
        thread.join()
    assert result.exit_code == 0, result.output
    headers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(headers) == 3
    assert all(h["schema"] == "temseg.mask/1" and h["material"] == "Au" for h in headers)
    assert [h["seq"] for h in headers] == list(range(headers[0]["seq"], headers[0]["seq"] + 3))


def _closed_by_peer(conn: socket.socket, timeout_s: float) -> bool:
    """Whether the publisher closes ``conn`` within ``timeout_s`` (its greeting is skipped)."""
    conn.settimeout(timeout_s)
    try:
        while conn.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def test_connections_beyond_max_peers_are_closed_and_their_places_reused() -> None:
    with Publisher(ANY_PORT, max_peers=4) as pub:
        host, port = pub.bound_url.removeprefix("tcp://").rsplit(":", 1)
        conns = [socket.create_connection((host, int(port))) for _ in range(10)]
        try:
            assert pub.outlet is not None
            deadline = time.monotonic() + 30
            while pub.outlet.refused < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            closed = [_closed_by_peer(c, 0.5) for c in conns]
            assert sum(closed) == 6 and pub.outlet.refused == 6, closed
            while pub.outlet.peers != 4 and time.monotonic() < deadline:
                time.sleep(0.05)  # libzmq reports the closed ones gone
            assert pub.outlet.peers == 4
        finally:
            for conn in conns:
                conn.close()
        # The places of the closed connections are free again for a subscriber.
        with Subscriber(pub.bound_url) as sub:
            _sync(pub, sub)
            pub.publish_mask({"material": "Au", "frame_id": 1}, _mask(1))
            assert [m.header["frame_id"] for m in _masks_only(sub)] == [1]
