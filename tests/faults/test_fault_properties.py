"""Property-based tests: whatever the bytes, the frame reader returns a Frame or raises
FrameError, and the stream decoder returns a message or raises ProtocolError.

Valid TIFFs of any supported sample type, byte order, layout and size must
come back with the same pixels. (Round trips of masks and PackBits runs are in
``tests/test_protocol.py``.)
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from temseg.frames import Frame, FrameError, read_frame
from temseg.frames.read import SUPPORTED_DTYPES
from temseg.stream.protocol import (
    ProtocolError,
    StreamMessage,
    decode_message,
    encode_error_message,
    encode_mask_message,
    packbits_decode,
    packbits_encode,
)

MAX_PIXELS = 1 << 16  # keeps a corrupt header from making an example allocate gigabytes
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz") / "frame.tif"


def read_bytes(path: Path, data: bytes) -> Frame | None:
    """Write ``data`` to ``path`` and read it; None on FrameError, any other exception escapes.

    The file is read twice, from its path and from ``data`` in memory (as the
    daemon does after hashing); both must give the same pixels or both refuse.
    """
    path.write_bytes(data)
    frames: list[Frame | None] = []
    for in_memory in (None, data):
        try:
            frames.append(read_frame(path, max_pixels=MAX_PIXELS, data=in_memory))
        except FrameError as exc:
            assert str(path) in str(exc)
            frames.append(None)
    from_path, from_memory = frames
    assert (from_path is None) == (from_memory is None)
    if from_path is not None and from_memory is not None:
        assert from_memory.image.dtype == from_path.image.dtype
        np.testing.assert_array_equal(from_memory.image, from_path.image)
        assert from_memory.metadata == from_path.metadata
    return from_path


def valid_tiff(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        rng.integers(0, 4000, (24, 16), dtype=np.uint16),
        metadata={"material": "Au", "pixel_nm": 0.05},
        compression=(None, "zlib", "lzw", "zstd")[seed % 4],
    )
    return buffer.getvalue()


# ---------------------------------------------------------------- frame reader


@FUZZ
@given(st.binary(max_size=2048))
def test_reader_on_random_bytes(scratch: Path, data: bytes) -> None:
    read_bytes(scratch, data)


@FUZZ
@given(
    st.sampled_from([b"II*\0", b"MM\0*", b"II+\0\x08\0\0\0", b"MM\0+\0\x08\0\0"]),
    st.binary(max_size=1024),
)
def test_reader_on_tiff_magic_and_random_bytes(scratch: Path, magic: bytes, rest: bytes) -> None:
    read_bytes(scratch, magic + rest)


@FUZZ
@given(
    st.integers(0, 3),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_reader_on_corrupted_tiffs(
    scratch: Path, seed: int, flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(valid_tiff(seed))
    for position, value in flips:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    frame = read_bytes(scratch, bytes(data))
    if frame is not None:
        assert frame.image.ndim == 2 and frame.image.dtype in SUPPORTED_DTYPES
        assert frame.image.dtype.kind != "f" or np.isfinite(frame.image).all()


def _images() -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from(SUPPORTED_DTYPES).flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
            elements=hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False),
        )
    )


@settings(max_examples=120, deadline=None)
@given(
    _images(),
    st.sampled_from(["<", ">"]),
    st.sampled_from([None, "zlib", "lzw", "zstd"]),
    st.booleans(),
    st.one_of(st.none(), st.floats(1e-4, 1e3)),
)
def test_valid_tiffs_read_back_exactly(
    scratch: Path,
    image: np.ndarray,
    byteorder: str,
    compression: str | None,
    tiled: bool,
    pixel_nm: float | None,
) -> None:
    options: dict[str, Any] = {"byteorder": byteorder, "compression": compression}
    if tiled:
        options["tile"] = (16, 16)
    if pixel_nm is not None:
        options["metadata"] = {"pixel_nm": pixel_nm}
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **options)
    frame = read_bytes(scratch, buffer.getvalue())
    assert frame is not None
    assert frame.image.dtype == image.dtype.newbyteorder("=") and frame.image.dtype.isnative
    np.testing.assert_array_equal(frame.image, image)
    assert frame.pixel_nm == pixel_nm


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([np.nan, np.inf, -np.inf]),
    st.integers(0, 63),
)
def test_non_finite_pixels_are_frame_errors(
    scratch: Path, dtype: type, bad: float, where: int
) -> None:
    image = np.zeros((8, 8), dtype)
    image.flat[where] = bad
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    assert read_bytes(scratch, buffer.getvalue()) is None


# ---------------------------------------------------------------- stream protocol


def decodes_or_refuses(parts: list[bytes]) -> StreamMessage | None:
    try:
        message = decode_message(parts)
    except ProtocolError:
        return None
    if message.mask is not None:
        assert list(message.mask.shape) == message.header["shape"]
    return message


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=5))
@example([b"temseg.mask.Au", b"[" * 100_000])  # nesting deeper than the JSON parser goes
@example([b"temseg.mask.Au", b'{"seq": ' + b"9" * 5000 + b"}"])  # an integer too long to parse
def test_decoder_on_random_parts(parts: list[bytes]) -> None:
    decodes_or_refuses(parts)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "schema": st.sampled_from(["temseg.mask/1", "temseg.error/1"]) | _JSON,
            "seq": st.integers(-5, 10**12) | _JSON,
            "run_id": st.text(max_size=8) | _JSON,
            "material": st.sampled_from(["Au", "CdSe"]) | _JSON,
            "shape": st.lists(st.integers(-2, 10**9), max_size=3) | _JSON,
            "dtype": st.just("uint8") | _JSON,
            "encoding": st.sampled_from(["raw", "packbits"]) | _JSON,
            "probability": st.just("float16") | _JSON,
        },
    ),
    st.sampled_from(["temseg.mask.Au", "temseg.mask.CdSe", "temseg.error", ""]),
    st.lists(st.binary(max_size=200), max_size=3),
)
def test_decoder_on_random_headers(header: dict[str, Any], topic: str, body: list[bytes]) -> None:
    decodes_or_refuses([topic.encode(), json.dumps(header).encode(), *body])


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=30),
        elements=st.floats(0, 1, width=32),
    ),
    st.sampled_from(["raw", "packbits"]),
)
def test_probability_round_trip(probability: np.ndarray, encoding: str) -> None:
    mask = (probability > 0.5).astype(np.uint8)
    header = {"material": "Au", "seq": 1, "run_id": "r"}
    message = decode_message(
        encode_mask_message(header, mask, encoding=encoding, probability=probability)
    )
    assert message.probability is not None and message.probability.dtype == np.float16
    np.testing.assert_array_equal(message.probability, probability.astype(np.float16))
    np.testing.assert_array_equal(message.mask, mask)


@settings(max_examples=60, deadline=None)
@given(st.text(), st.text(), st.integers(0, 2**53))
def test_error_message_round_trip(source: str, error: str, seq: int) -> None:
    header = {"source": source, "error": error, "seq": seq, "run_id": "r"}
    message = decode_message(encode_error_message(header))
    assert message.is_error and message.topic == "temseg.error"
    assert {k: message.header[k] for k in header} == header


def reference_packbits_decode(data: bytes) -> tuple[bytes, bool]:
    """The decoder of docs/protocol.md, byte by byte: the bytes decoded and whether
    the stream ended inside a packet (then the bytes are those decoded before it)."""
    out, i = bytearray(), 0
    while i < len(data):
        n = data[i]
        i += 1
        if n < 128:
            if i + n + 1 > len(data):
                return bytes(out), True
            out += data[i : i + n + 1]
            i += n + 1
        elif n > 128:
            if i >= len(data):
                return bytes(out), True
            out += data[i : i + 1] * (257 - n)
            i += 1
    return bytes(out), False


@FUZZ
@given(st.binary(max_size=600))
@example(b"\x02\x01")  # literal of 3 with 1 byte left
@example(b"\x80\xfe")  # no-op, then a repeat with no value byte
@example(b"\x00\x07\x00")  # a final literal header with nothing after it
def test_packbits_decoder_on_random_bytes(data: bytes) -> None:
    expected, truncated = reference_packbits_decode(data)
    try:
        decoded = packbits_decode(data)
    except ProtocolError:
        assert truncated
        return
    # A stream cut inside a packet is refused or decoded up to that packet (a lone
    # final header byte reads as padding); a message's length check then refuses it.
    assert decoded == expected
    assert len(decoded) <= 128 * len(data)
    assert packbits_decode(packbits_encode(decoded)) == decoded
