"""temseg.stream: masks over ZeroMQ PUB/SUB (wire format in ``docs/protocol.md``).

Protocol (:mod:`temseg.stream.protocol`, pure, no sockets)::

    SCHEMA_MASK = "temseg.mask/1" ; SCHEMA_ERROR = "temseg.error/1"
    encode_mask(mask, encoding="raw" | "packbits") -> EncodedMask  # .shape .encoding .body
    encode_mask_message(header, mask | EncodedMask, *, encoding="raw" | "packbits",
                        probability=None) -> list[bytes | memoryview]  # needs "material"
    encode_error_message(header) -> list[bytes]
    decode_message(parts) -> StreamMessage  # .topic .header .mask .probability .is_error
    packbits_encode(data: bytes) -> bytes ; packbits_decode(data: bytes) -> bytes
    ProtocolError(ValueError)

Publisher (thread-confined, never blocks; one per process run)::

    Publisher(url="tcp://127.0.0.1:5557", *, send_hwm=100, encoding="raw",
              send_probability=False, curve_keys: Path | None = None,
              nodrop=False, context=None, linger_ms=1000)
        .publish_mask(header_fields, mask | EncodedMask, probability=None) -> dict  # as sent
        .publish_error(source, error) -> dict
        .run_id: str  .seq: int  .dropped: int  .bound_url: str
        .close() ; context manager

    header_fields for a mask (all but material optional, see docs/protocol.md):
        material, frame_id, source, sha256, threshold, model_id, backend,
        n_particles, area_fraction, particles (list of Particle.to_dict()),
        pixel_nm, timing_ms {read, infer, segment, total}, acquired_at (ISO 8601 UTC)

Subscriber (iterator of StreamMessage)::

    Subscriber(url="tcp://127.0.0.1:5557", *, topics=("temseg.",),
               curve_keys: Path | None = None, client_key: Path | None = None,
               timeout_ms=None, context=None)
        .receive(timeout_ms=None) -> StreamMessage | None
        .gaps: list[(first missed seq, seq received)]  .invalid  .received
        .close() ; context manager ; for message in subscriber: ...

CURVE keys (:mod:`temseg.stream.keys`)::

    generate_keys(out_dir, clients=("client",)) -> KeyFiles
        # server.key(_secret), clients/<name>.key(_secret), authorized/<name>.key
    load_client_keys(curve_keys, client_key=None) -> (server_pub, client_pub, client_secret)
"""

from temseg.stream.keys import KeyFiles, generate_keys, load_client_keys
from temseg.stream.protocol import (
    SCHEMA_ERROR,
    SCHEMA_MASK,
    EncodedMask,
    ProtocolError,
    StreamMessage,
    decode_message,
    encode_error_message,
    encode_mask,
    encode_mask_message,
    packbits_decode,
    packbits_encode,
)
from temseg.stream.publisher import DEFAULT_URL, Publisher
from temseg.stream.subscriber import Subscriber

__all__ = [
    "DEFAULT_URL",
    "SCHEMA_ERROR",
    "SCHEMA_MASK",
    "EncodedMask",
    "KeyFiles",
    "ProtocolError",
    "Publisher",
    "StreamMessage",
    "Subscriber",
    "decode_message",
    "encode_error_message",
    "encode_mask",
    "encode_mask_message",
    "generate_keys",
    "load_client_keys",
    "packbits_decode",
    "packbits_encode",
]
