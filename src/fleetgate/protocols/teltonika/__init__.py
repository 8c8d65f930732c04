"""Teltonika tracker protocol: pure, sans-I/O decoders, encoders and TCP connection.

Usable on its own, like a Traccar decoder, with no server around it::

    from fleetgate.protocols.teltonika import decode_frame, frame_to_json

    frame = decode_frame(bytes.fromhex("000000000000003608010000016b40d8ea30..."))
    frame.kind, frame.codec_name, frame.crc_ok   # ("avl", "8", True)
    frame.records[0].io                          # {21: 3, 1: 1, 66: 24079, ...}
    frame_to_json(frame)                         # what `fleetgate decode teltonika` prints

A server drives :class:`TcpConnection` (bytes in, events out; see its module docstring),
turns ``AvlFrame``/``GprsFrame`` events into fleetgate records with :func:`to_records`
and acks with ``TcpConnection.ack``; over UDP it uses :func:`decode_udp_datagram`,
:func:`encode_udp_ack` and :class:`UdpDuplicateFilter`. Simulators build traffic with
:func:`encode_imei`, :func:`encode_avl_frame`, :func:`encode_udp_datagram` and answer
commands with :func:`encode_response`.

Refusals: every decoder raises only :class:`TeltonikaDecodeError`. Its subclass
:class:`ImpossibleValueError` marks a well-framed packet carrying a value that cannot be
true (a device time of 2**63 ms or later, or past 9999-12-31T23:59:59.999Z; non-finite
GH3000 coordinates): like a CRC mismatch it gets no ack and the device keeps its data, and
on TCP it arrives as a ``FrameRefused`` event that keeps the connection open.

Modules: ``framing`` (cutting the TCP stream), ``avl`` (codecs 8/8E/16, and the entry
point for every AVL codec), ``gh3000`` (codec 7), ``gprs`` (codecs 12–15), ``udp``,
``crc``, ``io_names`` (IO-id tables per device family), ``records`` (Record mapping),
``encoder``, ``connection``, ``events``, ``model``, ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from fleetgate.protocols.teltonika.avl import decode_avl_body, encode_avl_body
from fleetgate.protocols.teltonika.connection import TcpConnection, decode_data_frame
from fleetgate.protocols.teltonika.crc import crc16_ibm
from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei
from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import (
    AvlFrame,
    CrcMismatch,
    FrameRefused,
    GprsFrame,
    ImeiReceived,
    KeepAlive,
    ProtocolViolation,
    TcpEvent,
)
from fleetgate.protocols.teltonika.framing import (
    ENVELOPE,
    IMEI,
    KEEPALIVE,
    NEED_MORE,
    frame_crc,
    next_frame,
    parse_imei,
)
from fleetgate.protocols.teltonika.gprs import (
    decode_gprs_body,
    encode_command,
    encode_gprs_frame,
    encode_response,
)
from fleetgate.protocols.teltonika.io_names import IoTable, io_table
from fleetgate.protocols.teltonika.model import (
    AvlRecord,
    Gh3000Record,
    GprsMessage,
    codec_name,
)
from fleetgate.protocols.teltonika.records import (
    avl_record_data,
    gprs_message_data,
    to_records,
)
from fleetgate.protocols.teltonika.udp import (
    UdpDatagram,
    UdpDuplicateFilter,
    Verdict,
    decode_udp_datagram,
    encode_udp_ack,
    encode_udp_datagram,
)
from fleetgate.records import format_rfc3339_ms

__all__ = [
    "AvlFrame",
    "AvlRecord",
    "CrcMismatch",
    "DecodedFrame",
    "FrameRefused",
    "Gh3000Record",
    "GprsFrame",
    "GprsMessage",
    "ImeiReceived",
    "ImpossibleValueError",
    "IoTable",
    "KeepAlive",
    "ProtocolViolation",
    "TcpConnection",
    "TcpEvent",
    "TeltonikaDecodeError",
    "UdpDatagram",
    "UdpDuplicateFilter",
    "Verdict",
    "avl_record_data",
    "crc16_ibm",
    "decode_avl_body",
    "decode_frame",
    "decode_gprs_body",
    "decode_udp_datagram",
    "encode_avl_body",
    "encode_avl_frame",
    "encode_command",
    "encode_gprs_frame",
    "encode_imei",
    "encode_response",
    "encode_udp_ack",
    "encode_udp_datagram",
    "frame_to_json",
    "gprs_message_data",
    "io_table",
    "to_records",
]

FrameKind = Literal["imei", "keepalive", "avl", "gprs"]
_NO_LIMIT: Final = 0xFFFF_FFFF  # a complete frame in memory: no buffering bound needed
_NO_RECORDS: Final[tuple[AvlRecord, ...]] = ()
_NO_MESSAGES: Final[tuple[GprsMessage, ...]] = ()


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """One complete TCP frame, decoded and checked by :func:`decode_frame`."""

    kind: FrameKind
    raw: bytes
    codec: int | None = None
    imei: str | None = None
    records: tuple[AvlRecord, ...] = _NO_RECORDS
    messages: tuple[GprsMessage, ...] = _NO_MESSAGES
    data_length: int | None = None
    crc_stored: int | None = None
    crc_computed: int | None = None

    @property
    def codec_name(self) -> str | None:
        """``8``, ``8E``, ``16``, ``12`` ... (None for IMEI and keep-alive frames)."""
        return None if self.codec is None else codec_name(self.codec)

    @property
    def crc_ok(self) -> bool | None:
        """Whether the stored CRC matches (None for frames without a CRC)."""
        if self.crc_stored is None:
            return None
        return self.crc_stored == self.crc_computed

    @property
    def reply(self) -> bytes | None:
        """What a strict server answers: ``01`` for an IMEI, the u32 count for a valid
        AVL frame, nothing for keep-alives, GPRS messages and bad-CRC frames."""
        if self.kind == "imei":
            return b"\x01"
        if self.kind == "avl" and self.crc_ok:
            return len(self.records).to_bytes(4, "big")
        return None


def decode_frame(data: bytes, *, io16_group: bool = False) -> DecodedFrame:
    """Decode ONE complete TCP frame: IMEI login, ``ff`` keep-alive, AVL or GPRS packet.

    The frame is cut by the same framing code as :class:`TcpConnection` and decoded by
    the same :func:`~.connection.decode_data_frame`, so the library and the server agree
    on every frame. Length, preamble, N1 = N2 and the record structure are validated and
    raise :class:`TeltonikaDecodeError` with a one-line reason (an impossible device time
    raises its subclass :class:`ImpossibleValueError`). A wrong CRC does not raise: the
    frame is decoded and reported with ``crc_ok`` False (a server would not ack it).
    16-byte IO groups are detected; ``io16_group=True`` forces them.
    """
    data = bytes(data)
    if not data:
        raise TeltonikaDecodeError("empty frame")
    kind, length = next_frame(data, 0, len(data), established=True, max_frame_bytes=_NO_LIMIT)
    if kind == NEED_MORE:
        raise TeltonikaDecodeError(_incomplete(data))
    if kind == KEEPALIVE:
        if len(data) != 1:
            raise TeltonikaDecodeError(
                f"keep-alive is the single byte ff; {len(data) - 1} more bytes follow"
            )
        return DecodedFrame("keepalive", data)
    if kind == IMEI:
        return DecodedFrame("imei", data, imei=parse_imei(data))
    if length != len(data):
        raise TeltonikaDecodeError(
            f"frame is {len(data)} bytes but data length {length - ENVELOPE} implies {length}"
        )
    stored, computed = frame_crc(data)
    event = decode_data_frame(data, io16_group)
    if isinstance(event, AvlFrame):
        return DecodedFrame(
            "avl", data, event.codec, records=event.records, data_length=length - ENVELOPE,
            crc_stored=stored, crc_computed=computed,
        )
    return DecodedFrame(
        "gprs", data, data[8], messages=event.messages, data_length=length - ENVELOPE,
        crc_stored=stored, crc_computed=computed,
    )


def _incomplete(data: bytes) -> str:
    if len(data) < 2:
        return f"frame is {len(data)} byte; a frame starts with at least 2"
    if data[1]:
        return f"IMEI frame is {len(data)} bytes but its length field says {data[1]} + 2"
    if len(data) < 8:
        return f"data frame is {len(data)} bytes; its header alone is 8"
    implied = int.from_bytes(data[4:8], "big") + ENVELOPE
    return f"frame is {len(data)} bytes but data length {implied - ENVELOPE} implies {implied}"


def frame_to_json(decoded: DecodedFrame) -> dict[str, Any]:
    """A JSON-ready description of a decoded frame (for ``fleetgate decode teltonika``)."""
    reply = decoded.reply
    out: dict[str, Any] = {
        "kind": decoded.kind,
        "length": len(decoded.raw),
    }
    if decoded.kind == "imei":
        out["imei"] = decoded.imei
    if decoded.codec is not None:
        out["codec"] = decoded.codec_name
        out["codec_id"] = decoded.codec
        out["data_length"] = decoded.data_length
        out["crc"] = {
            "ok": decoded.crc_ok,
            "stored": f"{decoded.crc_stored:04x}",
            "computed": f"{decoded.crc_computed:04x}",
        }
    if decoded.kind == "avl":
        out["record_count"] = len(decoded.records)
        out["records"] = [
            {"time": format_rfc3339_ms(rec.timestamp_ms), "timestamp_ms": rec.timestamp_ms}
            | avl_record_data(rec)
            for rec in decoded.records
        ]
    elif decoded.kind == "gprs":
        out["message_count"] = len(decoded.messages)
        messages = []
        for message in decoded.messages:
            item = gprs_message_data(message)
            if message.timestamp_ms is not None:
                item["time"] = format_rfc3339_ms(message.timestamp_ms)
            messages.append(item)
        out["messages"] = messages
    out["reply"] = reply.hex() if reply is not None else None
    return out

