"""temseg.stream: masks over ZeroMQ PUB/SUB.

The wire format (topics, every header field, the binary parts, gap
detection, CURVE) is specified in ``docs/protocol.md``; each name below is
documented where it is defined:

- :mod:`temseg.stream.protocol`: encoding and decoding messages (pure, no sockets);
- :mod:`temseg.stream.publisher`: :class:`Publisher`, the daemon's side;
- :mod:`temseg.stream.subscriber`: :class:`Subscriber`, an iterator of :class:`StreamMessage`;
- :mod:`temseg.stream.keys`: CURVE key pairs and the authorised clients.
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
