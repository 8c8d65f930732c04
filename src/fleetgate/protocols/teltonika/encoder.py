"""Device-side encoders: what a tracker sends (used by the simulator and by tests).

``encode_avl_frame`` is the exact inverse of the TCP connection's AVL path for every AVL
codec (7, 8, 8E, 16; 16-byte IO groups with ``io16_group``): decoding its output gives back
equal records (hypothesis round trips in the tests prove it). Command answers a device
sends are built by :func:`~.gprs.encode_response`, UDP datagrams by
:func:`~.udp.encode_udp_datagram`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetgate.protocols.teltonika.avl import encode_avl_body
from fleetgate.protocols.teltonika.framing import IMEI_MAX_LENGTH, wrap_tcp
from fleetgate.protocols.teltonika.model import AvlRecord


def encode_imei(imei: str) -> bytes:
    """The IMEI login frame: u16 length, then the ASCII digits (spec 3.2)."""
    if not (imei.isdigit() and imei.isascii() and 1 <= len(imei) <= IMEI_MAX_LENGTH):
        raise ValueError(f"IMEI must be 1..{IMEI_MAX_LENGTH} ASCII digits, got {imei!r}")
    return len(imei).to_bytes(2, "big") + imei.encode("ascii")


def encode_avl_frame(
    codec: int, records: Sequence[AvlRecord], *, io16_group: bool = False
) -> bytes:
    """A complete TCP AVL data packet: preamble, data length, body, CRC (spec 3.3)."""
    return wrap_tcp(encode_avl_body(codec, records, io16_group=io16_group))
