"""Teltonika over UDP (spec section 4): one self-contained datagram per AVL packet.

No handshake and no CRC: the IMEI travels in every datagram and the length field is the
only integrity check, so it is enforced (a datagram whose length field is not its size
minus 2 is refused). The server acks with 7 bytes echoing the packet id and the AVL
packet id (:func:`encode_udp_ack`; Traccar's ``0000`` packet id is not copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from struct import Struct
from typing import Final

from fleetgate.protocols.teltonika.avl import decode_avl_span, encode_avl_body
from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.framing import IMEI_MAX_LENGTH
from fleetgate.protocols.teltonika.model import AVL_CODECS, AvlRecord, codec_name

_HEADER: Final = Struct(">HHBBH")  # length, packet id, unused byte, AVL packet id, IMEI len
_ACK: Final = Struct(">HHBBB")


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """One decoded device → server UDP datagram."""

    packet_id: int
    avl_packet_id: int
    imei: str
    codec: int
    records: tuple[AvlRecord, ...]
    raw: bytes


def decode_udp_datagram(data: bytes, *, io16_group: bool = False) -> UdpDatagram:
    """Decode and validate one datagram; raises TeltonikaDecodeError when it must be dropped."""
    if len(data) < _HEADER.size:
        raise TeltonikaDecodeError(f"UDP datagram is {len(data)} bytes; too short")
    length, packet_id, _unused, avl_packet_id, imei_length = _HEADER.unpack_from(data)
    if length != len(data) - 2:
        raise TeltonikaDecodeError(
            f"UDP length field {length} != datagram size {len(data)} - 2"
        )
    if not 1 <= imei_length <= IMEI_MAX_LENGTH:
        raise TeltonikaDecodeError(f"IMEI length {imei_length} outside 1..{IMEI_MAX_LENGTH}")
    body_start = _HEADER.size + imei_length
    if len(data) < body_start + 3:
        raise TeltonikaDecodeError("UDP datagram ends before its AVL body")
    digits = data[_HEADER.size : body_start]
    if not (digits.isdigit() and digits.isascii()):
        raise TeltonikaDecodeError(f"IMEI is not ASCII digits: {digits.hex()}")
    codec = data[body_start]
    if codec not in AVL_CODECS:
        raise TeltonikaDecodeError(f"codec {codec_name(codec)} is not an AVL codec (8, 8E, 16)")
    records = decode_avl_span(data, body_start, len(data), io16_group)
    return UdpDatagram(packet_id, avl_packet_id, digits.decode("ascii"), codec, records, data)


def encode_udp_ack(packet_id: int, avl_packet_id: int, count: int) -> bytes:
    """The 7-byte server ack: ``0005`` packet id ``01`` AVL packet id, accepted count."""
    return _ACK.pack(5, packet_id, 1, avl_packet_id, count)


def encode_udp_datagram(
    imei: str,
    codec: int,
    records: Sequence[AvlRecord],
    *,
    packet_id: int = 0xCAFE,
    avl_packet_id: int = 0,
    io16_group: bool = False,
) -> bytes:
    """A device → server datagram (for simulators and tests)."""
    body = encode_avl_body(codec, records, io16_group=io16_group)
    imei_bytes = imei.encode("ascii")
    rest = (
        _HEADER.pack(0, packet_id, 1, avl_packet_id, len(imei_bytes))[2:] + imei_bytes + body
    )
    return len(rest).to_bytes(2, "big") + rest
