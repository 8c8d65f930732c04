"""Teltonika tracker protocol: pure, sans-I/O decoders, encoders and TCP connection.

Usable on its own, like a Traccar decoder, with no server around it::

    from fleetgate.protocols.teltonika import decode_frame, frame_to_json

    frame = decode_frame(bytes.fromhex("000000000000003608010000016b40d8ea30..."))
    frame.kind, frame.codec_name, frame.crc_ok   # ("avl", "8", True)
    frame.records[0].io                          # {21: 3, 1: 1, 66: 24079, ...}
    frame_to_json(frame)                         # what `fleetgate decode teltonika` prints

A server drives :class:`TcpConnection` (bytes in, events out; see its module docstring),
turns ``AvlFrame``/``GprsFrame`` events into fleetgate records with :func:`to_records`
and acks with ``TcpConnection.ack``. Simulators build traffic with :func:`encode_imei`,
:func:`encode_avl_frame` and :func:`encode_command`.

Modules: ``framing`` (cutting the TCP stream), ``avl`` (codecs 8/8E/16), ``gprs`` (codecs
12–15), ``udp``, ``crc``, ``io_names`` (the IO-id table), ``records`` (Record mapping),
``encoder``, ``connection``, ``events``, ``model``, ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from fleetgate.protocols.teltonika.avl import decode_avl_body, decode_avl_span, encode_avl_body
from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.crc import crc16_ibm
from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei
from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import (
    AvlFrame,
    CrcMismatch,
    GprsFrame,
    ImeiReceived,
    KeepAlive,
    ProtocolViolation,
    TcpEvent,
)
from fleetgate.protocols.teltonika.framing import (
    ENVELOPE,
    KEEPALIVE_BYTE,
    MIN_DATA_LENGTH,
    frame_crc,
    parse_imei,
)
from fleetgate.protocols.teltonika.gprs import (
    decode_gprs_body,
    decode_gprs_span,
    encode_command,
    encode_gprs_frame,
)
from fleetgate.protocols.teltonika.model import (
    AVL_CODECS,
    GPRS_CODECS,
    AvlRecord,
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
    "GprsFrame",
    "GprsMessage",
    "ImeiReceived",
    "KeepAlive",
    "ProtocolViolation",
    "TcpConnection",
    "TcpEvent",
    "TeltonikaDecodeError",
    "UdpDatagram",
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
    "encode_udp_ack",
    "encode_udp_datagram",
    "frame_to_json",
    "gprs_message_data",
    "to_records",
]

FrameKind = Literal["imei", "keepalive", "avl", "gprs"]
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

    Length, preamble, N1 = N2 and the record structure are validated and raise
    :class:`TeltonikaDecodeError` with a one-line reason. A wrong CRC does not raise:
    the frame is decoded and reported with ``crc_ok`` False (a server would not ack it).
    """
    data = bytes(data)
    if not data:
        raise TeltonikaDecodeError("empty frame")
    if data[0] == KEEPALIVE_BYTE:
        if len(data) != 1:
            raise TeltonikaDecodeError(
                f"keep-alive is the single byte ff; {len(data) - 1} more bytes follow"
            )
        return DecodedFrame("keepalive", data)
    if len(data) >= 2 and (data[0] or data[1]):
        return DecodedFrame("imei", data, imei=parse_imei(data))
    if len(data) < ENVELOPE + MIN_DATA_LENGTH:
        raise TeltonikaDecodeError(f"data frame is {len(data)} bytes; at least 15 needed")
    if data[:4] != b"\x00\x00\x00\x00":
        raise TeltonikaDecodeError("preamble is not 00000000")
    data_length = int.from_bytes(data[4:8], "big")
    if data_length < MIN_DATA_LENGTH:
        raise TeltonikaDecodeError(f"data length {data_length} is below {MIN_DATA_LENGTH}")
    if len(data) != data_length + ENVELOPE:
        raise TeltonikaDecodeError(
            f"frame is {len(data)} bytes but data length {data_length} implies "
            f"{data_length + ENVELOPE}"
        )
    stored, computed = frame_crc(data)
    codec = data[8]
    end = len(data) - 4
    if codec in AVL_CODECS:
        records = decode_avl_span(data, 8, end, io16_group)
        return DecodedFrame(
            "avl", data, codec, records=records, data_length=data_length,
            crc_stored=stored, crc_computed=computed,
        )
    if codec in GPRS_CODECS:
        messages = decode_gprs_span(data, 8, end)
        return DecodedFrame(
            "gprs", data, codec, messages=messages, data_length=data_length,
            crc_stored=stored, crc_computed=computed,
        )
    raise TeltonikaDecodeError(f"unknown codec {codec_name(codec)}")


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
            if message.timestamp_s is not None:
                item["time"] = format_rfc3339_ms(message.timestamp_s * 1000)
            messages.append(item)
        out["messages"] = messages
    out["reply"] = reply.hex() if reply is not None else None
    return out

