"""The stream wire format, without sockets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from temseg.segment import find_particles
from temseg.stream.protocol import (
    SCHEMA_ERROR,
    SCHEMA_MASK,
    EncodedMask,
    ProtocolError,
    decode_message,
    encode_error_message,
    encode_mask,
    encode_mask_message,
    packbits_decode,
    packbits_encode,
)

HEADER = {"material": "Au", "seq": 1, "run_id": "ab12", "frame_id": 3, "source": "/acq/a.tif"}


def _mask(h: int = 48, w: int = 64) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 7:30] = 1
    mask[30:, 50:] = 1
    return mask


@pytest.mark.parametrize("encoding", ["raw", "packbits"])
def test_mask_encoded_ahead_makes_the_same_message(encoding: str) -> None:
    mask = _mask(37, 53).astype(bool)
    probability = mask * np.float32(0.75)
    encoded = encode_mask(mask, encoding)
    assert isinstance(encoded, EncodedMask) and encoded.shape == (37, 53)
    ahead = encode_mask_message(HEADER, encoded, encoding=encoding, probability=probability)
    direct = encode_mask_message(HEADER, mask, encoding=encoding, probability=probability)
    assert [bytes(p) for p in ahead] == [bytes(p) for p in direct]
    message = decode_message(ahead)
    assert message.header["shape"] == [37, 53] and message.header["encoding"] == encoding
    np.testing.assert_array_equal(message.mask, mask)


def test_mask_encoded_otherwise_or_misshapen_probability_refused() -> None:
    encoded = encode_mask(_mask(), "packbits")
    with pytest.raises(ProtocolError, match="encoded as 'packbits', message needs 'raw'"):
        encode_mask_message(HEADER, encoded, encoding="raw")
    with pytest.raises(ProtocolError, match="probability shape"):
        encode_mask_message(
            HEADER, encoded, encoding="packbits", probability=np.zeros((4, 4), np.float32)
        )
    with pytest.raises(ProtocolError, match="encoding must be one of"):
        encode_mask(_mask(), "zip")
    with pytest.raises(ProtocolError, match="0 or 1"):
        encode_mask(_mask() * 2, "raw")


@pytest.mark.parametrize("encoding", ["raw", "packbits"])
def test_round_trip(encoding: str) -> None:
    mask = _mask()
    particles = [p.to_dict() for p in find_particles(mask, pixel_nm=0.1)]
    parts = encode_mask_message(
        {**HEADER, "particles": particles, "threshold": np.float32(0.5)}, mask, encoding=encoding
    )
    assert len(parts) == 3
    assert parts[0] == b"temseg.mask.Au"
    if encoding == "raw":
        assert parts[2] == mask.tobytes()
        assert np.shares_memory(np.frombuffer(parts[2], dtype=np.uint8), mask)  # not copied
    else:
        assert len(parts[2]) < mask.size
    message = decode_message(parts)
    assert not message.is_error
    assert message.topic == "temseg.mask.Au"
    assert message.header["schema"] == SCHEMA_MASK
    assert message.header["shape"] == [48, 64]
    assert message.header["dtype"] == "uint8"
    assert message.header["encoding"] == encoding
    assert message.header["threshold"] == 0.5
    assert message.header["particles"] == json.loads(json.dumps(particles))
    assert "probability" not in message.header
    assert message.mask is not None and message.mask.dtype == np.uint8
    np.testing.assert_array_equal(message.mask, mask)
    assert message.probability is None


def test_probability_part_is_float16_little_endian() -> None:
    mask = _mask(16, 24)
    prob = np.linspace(0, 1, mask.size).reshape(mask.shape)
    parts = encode_mask_message(HEADER, mask.astype(bool), probability=prob)
    assert len(parts) == 4
    assert parts[3] == prob.astype("<f2").tobytes()
    message = decode_message(parts)
    assert message.header["probability"] == "float16"
    assert message.probability is not None
    np.testing.assert_allclose(message.probability, prob, atol=1e-3)


def test_error_message() -> None:
    parts = encode_error_message({"seq": 4, "run_id": "ab12", "source": "/a.tif", "error": "boom"})
    assert parts[0] == b"temseg.error"
    message = decode_message(parts)
    assert message.is_error and message.mask is None
    assert message.header == {
        "schema": SCHEMA_ERROR,
        "seq": 4,
        "run_id": "ab12",
        "source": "/a.tif",
        "error": "boom",
    }


def test_packbits_is_standard() -> None:
    # The example of Apple Technical Note TN1023 and the TIFF 6.0 specification.
    unpacked = bytes.fromhex("aaaaaa80002aaaaaaaaa80002a22aaaaaaaaaaaaaaaaaaaa")
    packed = bytes.fromhex("feaa0280002afdaa0380002a22f7aa")
    assert packbits_encode(unpacked) == packed
    assert packbits_decode(packed) == unpacked
    assert packbits_decode(b"\x80" + packed + b"\x80") == unpacked  # 128 is a no-op
    assert packbits_encode(b"") == b"" and packbits_decode(b"") == b""
    assert packbits_encode(b"\x00" * 300) == b"\x81\x00\x81\x00\xd5\x00"  # 128 + 128 + 44


@given(st.binary(max_size=2000))
def test_packbits_round_trip_bytes(data: bytes) -> None:
    assert packbits_decode(packbits_encode(data)) == data


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 400)), max_size=30))
def test_packbits_round_trip_runs(runs: list[tuple[int, int]]) -> None:
    data = b"".join(bytes([value]) * n for value, n in runs)
    encoded = packbits_encode(data)
    assert packbits_decode(encoded) == data
    # Worst case of PackBits: one header byte per 128 bytes.
    assert len(encoded) <= len(data) + -(-len(data) // 128)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.uint8,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=70),
        elements=st.integers(0, 1),
    ),
    st.sampled_from(["raw", "packbits"]),
    st.text(min_size=1, max_size=12),
)
def test_encode_decode_random_masks(mask: np.ndarray, encoding: str, material: str) -> None:
    message = decode_message(
        encode_mask_message({**HEADER, "material": material}, mask, encoding=encoding)
    )
    assert message.topic == f"temseg.mask.{material}"
    assert message.header["shape"] == list(mask.shape)
    np.testing.assert_array_equal(message.mask, mask)


def _good() -> list[bytes]:
    return encode_mask_message(HEADER, _mask(8, 8), encoding="packbits")


def _with_header(**changes: object) -> list[bytes]:
    parts = _good()
    header = json.loads(parts[1])
    header.update(changes)
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([b"temseg.mask.Au"], "at least 2"),
        ([b"temseg.mask.Au", b"{not json", b""], "unreadable"),
        ([b"\xff\xfe", b"{}"], "unreadable"),
        ([b"temseg.mask.Au", b"[1, 2]", b""], "JSON object"),
        (_with_header(seq="1"), "integer 'seq'"),
        (_with_header(schema="temseg.mask/2"), "unsupported schema"),
        ([b"temseg.mask.CdSe", *_good()[1:]], "does not match material"),
        (_with_header(shape=[8]), "shape"),
        (_with_header(shape=[8, -8]), "shape"),
        (_with_header(dtype="uint16"), "dtype"),
        (_with_header(encoding="zlib"), "encoding"),
        (_with_header(shape=[8, 9]), "needs 72"),
        (_good()[:2], "3 or 4"),
        ([*_good(), b"extra"], "3 or 4"),
        (_with_header(probability="float32"), "float16"),
        ([*_good()[:2], b"\x05\x01"], "truncated or corrupt"),
        ([*_good()[:2], b"\xfe"], "truncated or corrupt"),
        ([*_good()[:2], b"\x00"], "has 0 bytes, shape"),  # a lone final header: padding
        ([*encode_error_message({"seq": 1, "run_id": "r"}), b"x"], "2 parts"),
    ],
)
def test_malformed_messages_raise_protocol_error(parts: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_message(parts)


def test_bad_values_are_refused_before_sending() -> None:
    mask = _mask(8, 8)
    with pytest.raises(ProtocolError, match="material"):
        encode_mask_message({"seq": 1}, mask)
    with pytest.raises(ProtocolError, match="2-D"):
        encode_mask_message(HEADER, np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ProtocolError, match="0 or 1"):
        encode_mask_message(HEADER, mask * 255)
    with pytest.raises(ProtocolError, match="dtype"):
        encode_mask_message(HEADER, mask.astype(float))
    with pytest.raises(ProtocolError, match="encoding"):
        encode_mask_message(HEADER, mask, encoding="zlib")
    with pytest.raises(ProtocolError, match="probability shape"):
        encode_mask_message(HEADER, mask, probability=np.zeros((4, 4)))
    with pytest.raises(ProtocolError, match="JSON"):
        encode_mask_message({**HEADER, "threshold": float("nan")}, mask)
    with pytest.raises(ProtocolError, match="JSON"):
        encode_mask_message({**HEADER, "thing": object()}, mask)
