"""Tesla's flatbuffers envelope: the binary WebSocket frame both directions use (spec §4).

No ``.fbs`` schema is published, so the two tables are described here by hand:

* ``FlatbuffersEnvelope`` (root, no file identifier): txid ``[ubyte]`` (slot 0), topic
  ``[ubyte]`` (1), message_type ``ubyte`` union tag (2), message union offset (3),
  message_id ``[ubyte]`` (4).
* ``FlatbuffersStream`` (union tag 4): created_at ``uint32`` (0), sender_id (1), payload (2),
  device_type (3), device_id (4) — all ``[ubyte]`` — and delivered_at_epoch_ms ``uint64`` (5).
* ``FlatbuffersStreamAck`` (union tag 5): empty.

Reading is a small bounds-checked walker over the generic flatbuffers encoding (root offset,
vtable, field offsets), so any valid flatbuffer parses, whatever order its writer laid things
out in. Every out-of-range offset or truncated vector becomes :class:`EnvelopeError`; the
Go reference turns the same faults into an error reply.

Building uses ``flatbuffers.Builder`` with the reference call order, so acks and error replies
are byte-identical to the Go server's (including the ack's union slot pointing at an empty
byte vector rather than a table, a harmless quirk readers never follow). The ack, sent for
every frame, is written directly with the same bytes; a test holds it to the builder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import flatbuffers

MESSAGE_NONE: Final = 0
MESSAGE_STREAM: Final = 4
MESSAGE_STREAM_ACK: Final = 5

# The error reply payload the reference server always sends, whatever went wrong.
ERROR_TEXT: Final = b"incorrect message format"

_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

_UINT32_MAX: Final = 0xFFFF_FFFF
_UINT64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF


class EnvelopeError(ValueError):
    """The frame is not a readable flatbuffer (truncated, offsets out of range)."""


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """A ``FlatbuffersStream`` union value: one record from the vehicle."""

    created_at: int
    sender_id: bytes
    payload: bytes
    device_type: bytes
    device_id: bytes
    delivered_at_epoch_ms: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded ``FlatbuffersEnvelope``.

    ``stream`` is set only when ``message_type`` is 4 and the union is present.
    ``has_message`` says whether the union slot was present at all: the reference answers
    "no union" and "union of another type" differently (spec §5 decision table).
    """

    txid: bytes
    topic: bytes
    message_type: int
    message_id: bytes
    stream: StreamMessage | None
    has_message: bool = True


# -- reading ------------------------------------------------------------------------------


class _Table:
    """One flatbuffers table inside ``buf``; every read is bounds-checked."""

    __slots__ = ("buf", "pos", "vtable", "vtable_size")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - _read(_I32, buf, pos)
        self.vtable = vtable
        # Like the Go reader: a short vtable just means "fields absent"; only the entries
        # actually read must lie inside the frame.
        self.vtable_size = _read(_U16, buf, vtable)

    def _field(self, slot: int) -> int:
        """Absolute position of the field in ``slot``, or 0 when absent."""
        voffset = 4 + 2 * slot
        if voffset >= self.vtable_size:
            return 0
        rel = _read(_U16, self.buf, self.vtable + voffset)
        return self.pos + rel if rel else 0

    def scalar(self, slot: int, fmt: struct.Struct) -> int:
        at = self._field(slot)
        return _read(fmt, self.buf, at) if at else 0

    def u8(self, slot: int) -> int:
        at = self._field(slot)
        if not at:
            return 0
        _check(self.buf, at, 1)
        return self.buf[at]

    def indirect(self, slot: int) -> int:
        """Absolute position an offset field points at, or 0 when absent."""
        at = self._field(slot)
        return at + _read(_U32, self.buf, at) if at else 0

    def byte_vector(self, slot: int) -> bytes:
        vec = self.indirect(slot)
        if not vec:
            return b""
        length = _read(_U32, self.buf, vec)
        _check(self.buf, vec + 4, length)
        return self.buf[vec + 4 : vec + 4 + length]


def _check(buf: bytes, pos: int, size: int) -> None:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise EnvelopeError(f"offset {pos}+{size} outside a {len(buf)}-byte frame")


def _read(fmt: struct.Struct, buf: bytes, pos: int) -> int:
    _check(buf, pos, fmt.size)
    value: int = fmt.unpack_from(buf, pos)[0]
    return value


def parse_envelope(data: bytes) -> Envelope:
    """Decode one binary frame.

    An empty frame is not a fault: it decodes as an envelope with nothing in it (no union),
    which the reference answers with an ack. Anything unreadable raises :class:`EnvelopeError`.
    """
    data = bytes(data)
    if not data:
        return Envelope(b"", b"", MESSAGE_NONE, b"", None, has_message=False)
    root = _Table(data, _read(_U32, data, 0))
    txid = root.byte_vector(0)
    topic = root.byte_vector(1)
    message_type = root.u8(2)
    message_pos = root.indirect(3)
    message_id = root.byte_vector(4)
    stream = None
    if message_pos and message_type == MESSAGE_STREAM:
        table = _Table(data, message_pos)
        stream = StreamMessage(
            created_at=table.scalar(0, _U32),
            sender_id=table.byte_vector(1),
            payload=table.byte_vector(2),
            device_type=table.byte_vector(3),
            device_id=table.byte_vector(4),
            delivered_at_epoch_ms=table.scalar(5, _U64),
        )
    return Envelope(txid, topic, message_type, message_id, stream, has_message=bool(message_pos))


# -- building -----------------------------------------------------------------------------


def _finish_envelope(
    builder: flatbuffers.Builder,
    message: int,
    message_type: int,
    *,
    txid: bytes,
    topic: bytes,
    message_id: bytes,
) -> bytes:
    txid_off = builder.CreateByteVector(txid)
    topic_off = builder.CreateByteVector(topic)
    message_id_off = builder.CreateByteVector(message_id)
    builder.StartObject(5)
    builder.PrependUOffsetTRelativeSlot(0, txid_off, 0)
    builder.PrependUOffsetTRelativeSlot(1, topic_off, 0)
    builder.PrependUint8Slot(2, message_type, 0)
    builder.PrependUOffsetTRelativeSlot(3, message, 0)
    builder.PrependUOffsetTRelativeSlot(4, message_id_off, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


def _stream_table(
    builder: flatbuffers.Builder,
    *,
    created_at: int,
    sender_id: bytes,
    payload: bytes,
    device_type: bytes,
    device_id: bytes,
    delivered_at_epoch_ms: int,
) -> int:
    if not 0 <= created_at <= _UINT32_MAX:
        raise ValueError(f"created_at {created_at} does not fit uint32")
    if not 0 <= delivered_at_epoch_ms <= _UINT64_MAX:
        raise ValueError(f"delivered_at_epoch_ms {delivered_at_epoch_ms} does not fit uint64")
    sender_off = builder.CreateByteVector(sender_id)
    payload_off = builder.CreateByteVector(payload)
    device_type_off = builder.CreateByteVector(device_type)
    device_id_off = builder.CreateByteVector(device_id)
    builder.StartObject(6)
    builder.PrependUOffsetTRelativeSlot(1, sender_off, 0)
    builder.PrependUint32Slot(0, created_at, 0)
    builder.PrependUOffsetTRelativeSlot(2, payload_off, 0)
    builder.PrependUOffsetTRelativeSlot(3, device_type_off, 0)
    builder.PrependUOffsetTRelativeSlot(4, device_id_off, 0)
    builder.PrependUint64Slot(5, delivered_at_epoch_ms, 0)
    end: int = builder.EndObject()
    return end


def _vector(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data + bytes(-len(data) % 4)


# The reference ack's fixed part: root offset, 2 bytes of alignment, the vtable (14 bytes:
# sizes, then field offsets txid 20, topic 16, type 15, message 8, message_id 4).
_ACK_HEAD: Final = bytes.fromhex("14000000 0000 0e00 1800 1400 1000 0f00 0800 0400")
_ACK_VTABLE_TO_TABLE: Final = 14


def build_ack(txid: bytes, topic: bytes) -> bytes:
    """The ack the server sends for a frame (message_type 5), byte-identical to the reference.

    The layout never changes shape (only vector lengths do), so it is written directly: the
    same bytes ``flatbuffers.Builder`` produces with the reference call order (see
    :func:`build_ack_with_builder`), about ten times faster on the per-frame path.
    """
    message_id_vec = _vector(b"")
    topic_vec = _vector(topic)
    txid_vec = _vector(txid)
    # Table at offset 20; its fields: message_id @24, message @28, type @35, topic @36,
    # txid @40; the vectors follow at 44 in the order message_id, topic, txid, body.
    at = 44
    message_id_pos = at
    topic_pos = message_id_pos + len(message_id_vec)
    txid_pos = topic_pos + len(topic_vec)
    body_pos = txid_pos + len(txid_vec)
    table = (
        _U32.pack(_ACK_VTABLE_TO_TABLE)
        + _U32.pack(message_id_pos - 24)
        + _U32.pack(body_pos - 28)
        + bytes((0, 0, 0, MESSAGE_STREAM_ACK))
        + _U32.pack(topic_pos - 36)
        + _U32.pack(txid_pos - 40)
    )
    return _ACK_HEAD + table + message_id_vec + topic_vec + txid_vec + _vector(b"")


def build_ack_with_builder(txid: bytes, topic: bytes) -> bytes:
    """:func:`build_ack` through ``flatbuffers.Builder`` (the reference call order)."""
    builder = flatbuffers.Builder(64 + len(txid) + len(topic))
    # QUIRK (reference): the union slot points at an empty byte vector, not at a table.
    body = builder.CreateByteVector(b"")
    return _finish_envelope(
        builder, body, MESSAGE_STREAM_ACK, txid=txid, topic=topic, message_id=b""
    )


def build_error(txid: bytes) -> bytes:
    """The error reply (a stream whose payload is ``incorrect message format``)."""
    builder = flatbuffers.Builder(128 + len(txid))
    table = _stream_table(
        builder,
        created_at=0,
        sender_id=b"",
        payload=ERROR_TEXT,
        device_type=b"",
        device_id=b"",
        delivered_at_epoch_ms=0,
    )
    return _finish_envelope(builder, table, MESSAGE_STREAM, txid=txid, topic=b"", message_id=b"")


def build_stream_envelope(
    *,
    txid: bytes,
    topic: bytes,
    payload: bytes,
    sender_id: bytes = b"",
    device_type: bytes = b"",
    device_id: bytes = b"",
    created_at: int = 0,
    delivered_at_epoch_ms: int = 0,
    message_id: bytes = b"",
) -> bytes:
    """A frame as a vehicle sends it (used by the simulator and tests)."""
    builder = flatbuffers.Builder(
        128 + len(payload) + len(txid) + len(topic) + len(sender_id) + len(message_id)
    )
    table = _stream_table(
        builder,
        created_at=created_at,
        sender_id=sender_id,
        payload=payload,
        device_type=device_type,
        device_id=device_id,
        delivered_at_epoch_ms=delivered_at_epoch_ms,
    )
    return _finish_envelope(
        builder, table, MESSAGE_STREAM, txid=txid, topic=topic, message_id=message_id
    )
