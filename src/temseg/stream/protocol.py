"""The temseg mask stream wire format: pure encode/decode, no sockets.

A message is a ZeroMQ multipart message (see ``docs/protocol.md``):

1. topic, UTF-8: ``temseg.mask.<material>`` or ``temseg.error``
2. header, UTF-8 JSON object (``schema`` ``temseg.mask/1`` or ``temseg.error/1``)
3. mask (masks only): ``h*w`` bytes, C order, 0 = background, 1 = particle,
   either raw or PackBits-compressed (header ``encoding``)
4. optional (masks only): float16 little-endian probability map, ``h*w*2`` bytes
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath
from typing import Any

import imagecodecs
import numpy as np

from temseg.options import MaskEncoding, choices

SCHEMA_MASK = "temseg.mask/1"
SCHEMA_ERROR = "temseg.error/1"
MASK_TOPIC_PREFIX = "temseg.mask."
ERROR_TOPIC = "temseg.error"
ENCODINGS = choices(MaskEncoding)
PROBABILITY_DTYPE = "float16"

_PROBABILITY_WIRE = np.dtype("<f2")
_MAX_RUN = 128


class ProtocolError(ValueError):
    """A message (or a value to be sent) does not follow the temseg stream protocol."""


@dataclass(frozen=True)
class StreamMessage:
    """One decoded message. ``mask`` (uint8, shape ``header["shape"]``) and
    ``probability`` (float16) are read-only views; ``.copy()`` them to modify."""

    topic: str
    header: dict[str, Any]
    mask: np.ndarray | None = None
    probability: np.ndarray | None = None

    @property
    def is_error(self) -> bool:
        return self.header.get("schema") == SCHEMA_ERROR


def mask_topic(material: str) -> str:
    """Topic of mask messages for ``material``: ``temseg.mask.<material>``."""
    if not isinstance(material, str) or not material:
        raise ProtocolError(f"material must be a non-empty string, got {material!r}")
    return MASK_TOPIC_PREFIX + material


def mask_header(
    fields: Mapping[str, Any], shape: Sequence[int], *, encoding: str, probability: bool
) -> dict[str, Any]:
    """``fields`` plus the keys describing the binary parts: ``schema``,
    ``shape`` [h, w], ``dtype`` ``"uint8"``, ``encoding`` and, when a
    probability part follows, ``probability`` ``"float16"``."""
    if encoding not in ENCODINGS:
        raise ProtocolError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    header = dict(fields)
    header.pop("probability", None)
    header["schema"] = SCHEMA_MASK
    header["shape"] = [int(shape[0]), int(shape[1])]
    header["dtype"] = "uint8"
    header["encoding"] = encoding
    if probability:
        header["probability"] = PROBABILITY_DTYPE
    return header


@dataclass(frozen=True)
class EncodedMask:
    """A mask in its wire form (:func:`encode_mask`): ``shape`` (h, w) in pixels,
    ``encoding`` and the ``body`` bytes of message part 3."""

    shape: tuple[int, int]
    encoding: str
    body: bytes | memoryview


def encode_mask(mask: np.ndarray, encoding: str = "raw") -> EncodedMask:
    """A 2-D 0/1 ``mask`` (bool or integer) in its wire form, ready for :func:`encode_mask_message`.

    Encoding ahead of publishing lets a caller do it on another thread (PackBits
    takes about 16 ms for a 4096 x 4096 px mask). With the raw encoding a
    C-contiguous uint8 or bool mask's body is a view of its memory, not a copy
    (16 MiB for a 4096 px frame): leave it unchanged until the message is sent.
    """
    if encoding not in ENCODINGS:
        raise ProtocolError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    mask_u8 = _as_mask(mask)
    raw = _wire_bytes(mask_u8)
    body = packbits_encode(raw) if encoding == "packbits" else raw
    return EncodedMask((mask_u8.shape[0], mask_u8.shape[1]), encoding, body)


def encode_mask_message(
    header: Mapping[str, Any],
    mask: np.ndarray | EncodedMask,
    *,
    encoding: str = "raw",
    probability: np.ndarray | None = None,
) -> list[bytes | memoryview]:
    """Multipart message for a 2-D 0/1 ``mask`` (bool or integer), or one already encoded.

    ``header`` must contain ``material`` (it selects the topic); ``schema``,
    ``shape``, ``dtype``, ``encoding`` and ``probability`` are set here.
    ``probability`` (same shape as the mask) is sent as float16. An array is
    encoded here as :func:`encode_mask` does (the same caveat about raw masks
    applies); an :class:`EncodedMask` must have ``encoding``.
    """
    encoded = mask if isinstance(mask, EncodedMask) else encode_mask(mask, encoding)
    if encoded.encoding != encoding:
        raise ProtocolError(f"mask encoded as {encoded.encoding!r}, message needs {encoding!r}")
    full = mask_header(
        header, encoded.shape, encoding=encoding, probability=probability is not None
    )
    if "material" not in full:
        raise ProtocolError("mask header needs 'material' (it selects the topic)")
    parts: list[bytes | memoryview] = [
        mask_topic(full["material"]).encode(),
        _dump(full),
        encoded.body,
    ]
    if probability is not None:
        prob = np.asarray(probability)
        if prob.shape != encoded.shape:
            raise ProtocolError(f"probability shape {prob.shape} != mask shape {encoded.shape}")
        parts.append(_wire_bytes(prob.astype(_PROBABILITY_WIRE, copy=False)))
    return parts


def _wire_bytes(array: np.ndarray) -> memoryview:
    """The bytes of ``array`` in C order, as a flat view (a copy only if it is not contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def encode_error_message(header: Mapping[str, Any]) -> list[bytes]:
    """Two-part error message; ``schema`` is set to ``temseg.error/1``."""
    return [ERROR_TOPIC.encode(), _dump({**header, "schema": SCHEMA_ERROR})]


def decode_message(parts: Sequence[bytes | memoryview]) -> StreamMessage:
    """Parse and check a received multipart message; :class:`ProtocolError` if malformed."""
    if len(parts) < 2:
        raise ProtocolError(f"expected at least 2 message parts, got {len(parts)}")
    try:
        topic = bytes(parts[0]).decode("utf-8")
        header = json.loads(bytes(parts[1]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge ints, deep nesting
        raise ProtocolError(f"unreadable topic or header: {str(exc)[:200]}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    if not isinstance(header.get("seq"), int) or not isinstance(header.get("run_id"), str):
        raise ProtocolError("header needs an integer 'seq' and a string 'run_id'")
    schema = header.get("schema")
    if schema == SCHEMA_ERROR:
        if topic != ERROR_TOPIC or len(parts) != 2:
            raise ProtocolError(f"error message needs topic {ERROR_TOPIC!r} and 2 parts")
        return StreamMessage(topic, header)
    if schema != SCHEMA_MASK:
        raise ProtocolError(f"unsupported schema {schema!r}; expected {SCHEMA_MASK!r}")
    return _decode_mask(topic, header, parts)


def _decode_mask(
    topic: str, header: dict[str, Any], parts: Sequence[bytes | memoryview]
) -> StreamMessage:
    if "material" not in header or topic != mask_topic(header["material"]):
        raise ProtocolError(f"topic {topic!r} does not match material {header.get('material')!r}")
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ProtocolError(f"shape must be [height, width] of non-negative ints, got {shape!r}")
    if header.get("dtype") != "uint8":
        raise ProtocolError(f"dtype must be 'uint8', got {header.get('dtype')!r}")
    encoding = header.get("encoding")
    if encoding not in ENCODINGS:
        raise ProtocolError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    with_probability = "probability" in header
    if with_probability and header["probability"] != PROBABILITY_DTYPE:
        raise ProtocolError(f"probability must be {PROBABILITY_DTYPE!r}")
    if len(parts) != (4 if with_probability else 3):
        raise ProtocolError(
            f"mask message has {len(parts)} parts, expected 3 or 4 with probability"
        )
    h, w = shape
    body: bytes | memoryview = memoryview(parts[2]).cast("B")  # no copy: the mask reads it
    if encoding == "packbits":
        body = packbits_decode(body)
    if len(body) != h * w:
        raise ProtocolError(f"mask has {len(body)} bytes, shape {shape} needs {h * w}")
    mask = np.frombuffer(body, dtype=np.uint8).reshape(h, w)
    mask.flags.writeable = False  # also where the received buffer itself is writable
    probability = None
    if with_probability:
        prob = memoryview(parts[3]).cast("B")
        if len(prob) != 2 * h * w:
            raise ProtocolError(
                f"probability has {len(prob)} bytes, shape {shape} needs {2 * h * w}"
            )
        probability = np.frombuffer(prob, dtype=_PROBABILITY_WIRE).reshape(h, w)
        probability.flags.writeable = False
    return StreamMessage(topic, header, mask, probability)


def packbits_encode(data: bytes | memoryview) -> bytes:
    """PackBits (Apple / TIFF compression 32773) of ``data``.

    Runs of 3 or more equal bytes become repeat packets (header ``257 - n``,
    one byte); other bytes go into literal packets (header ``n - 1``, ``n``
    bytes); ``n`` is at most 128. Vectorised with numpy.
    """
    src = np.frombuffer(data, dtype=np.uint8)
    size = src.size
    if size == 0:
        return b""
    # Runs of equal bytes.
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    lengths = np.diff(np.r_[starts, size])
    is_repeat = lengths >= 3
    # Segments: each repeat run alone, consecutive short runs merged into one literal.
    new_segment = is_repeat | np.r_[True, is_repeat[:-1]]
    seg_first_run = np.flatnonzero(new_segment)
    seg_start = starts[seg_first_run]
    seg_len = np.add.reduceat(lengths, seg_first_run)
    seg_repeat = is_repeat[seg_first_run]
    # Packets: segments cut into pieces of at most 128 bytes.
    n_pieces = -(-seg_len // _MAX_RUN)
    seg_of_packet = np.repeat(np.arange(seg_len.size), n_pieces)
    piece = np.arange(seg_of_packet.size) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    pkt_start = seg_start[seg_of_packet] + _MAX_RUN * piece
    pkt_len = np.minimum(_MAX_RUN, seg_len[seg_of_packet] - _MAX_RUN * piece)
    pkt_repeat = seg_repeat[seg_of_packet] & (pkt_len >= 2)
    out_len = np.where(pkt_repeat, 2, 1 + pkt_len)
    offset = np.cumsum(out_len) - out_len
    out = np.empty(int(out_len.sum()), dtype=np.uint8)
    out[offset] = np.where(pkt_repeat, 257 - pkt_len, pkt_len - 1).astype(np.uint8)
    out[offset[pkt_repeat] + 1] = src[pkt_start[pkt_repeat]]
    # Literal bytes, copied in one gather.
    lit = ~pkt_repeat
    lit_len, lit_start, lit_offset = pkt_len[lit], pkt_start[lit], offset[lit] + 1
    within = np.arange(int(lit_len.sum())) - np.repeat(np.cumsum(lit_len) - lit_len, lit_len)
    out[np.repeat(lit_offset, lit_len) + within] = src[np.repeat(lit_start, lit_len) + within]
    return out.tobytes()


def packbits_decode(data: bytes | memoryview) -> bytes:
    """Inverse of :func:`packbits_encode` for any standard PackBits stream
    (header 128 is a no-op), by imagecodecs' C decoder: 3-8 ms for a
    4096 x 4096 px mask, against 64-99 ms for a Python loop over the packets.

    A stream cut inside a packet raises :class:`ProtocolError`, except a lone
    final literal header, which reads as padding (the bytes before it come
    back; a message's length check then refuses a short mask).
    """
    try:
        # Any buffer works (a memoryview of the received message included); the stub
        # names fewer. With no ``out`` the result is a new ``bytes``: bytes() keeps it.
        return bytes(imagecodecs.packbits_decode(data))  # type: ignore[arg-type]
    except imagecodecs.PackbitsError as exc:
        raise ProtocolError(f"PackBits stream is truncated or corrupt ({exc})") from None


def _as_mask(mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ProtocolError(f"mask must be 2-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return np.ascontiguousarray(arr).view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ProtocolError(f"mask must be bool or integer 0/1, got dtype {arr.dtype}")
    signed = np.issubdtype(arr.dtype, np.signedinteger)
    if arr.size and (arr.max() > 1 or (signed and arr.min() < 0)):
        raise ProtocolError("mask values must be 0 or 1")
    return arr.astype(np.uint8, copy=False)


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dump(header: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(header, default=_json_value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"header cannot be sent as JSON: {exc}") from exc
    return text.encode("utf-8")
