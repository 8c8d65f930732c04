"""Teltonika over UDP (spec section 4): one self-contained datagram per AVL packet.

No handshake and no CRC: the IMEI travels in every datagram and the length field is the
only integrity check, so it is enforced (a datagram whose length field is not its size
minus 2 is refused). The server acks with 7 bytes echoing the packet id and the AVL
packet id (:func:`encode_udp_ack`; Traccar's ``0000`` packet id is not copied). Every AVL
codec (7, 8, 8E, 16) is accepted and 16-byte IO groups are detected, as on TCP.

Trackers resend a datagram whose ack was lost. :class:`UdpDuplicateFilter` recognises the
resend (same IMEI, AVL packet id and records within a time window) so the server acks it
again without storing it twice. It is sans-I/O: the caller passes the time in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from struct import Struct
from typing import Final

from fleetgate.protocols.teltonika.avl import decode_avl_span, encode_avl_body
from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.framing import IMEI_MAX_LENGTH
from fleetgate.protocols.teltonika.layouts import decode_learned, learn
from fleetgate.protocols.teltonika.model import AVL_CODECS, AvlRecord, codec_name

_HEADER: Final = Struct(">HHBBH")  # length, packet id, unused byte, AVL packet id, IMEI len
_ACK: Final = Struct(">HHBBB")


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """One decoded device → server UDP datagram.

    ``frame`` holds its records as a TCP frame of the same body would (read by a learned
    layout when there is one, :mod:`.layouts`); ``frame.raw`` is the whole datagram.
    """

    packet_id: int
    avl_packet_id: int
    imei: str
    codec: int
    frame: AvlFrame
    raw: bytes

    @property
    def records(self) -> tuple[AvlRecord, ...]:
        return self.frame.records

    @property
    def body(self) -> bytes:
        """The AVL body (codec byte .. N2): what a resend repeats exactly."""
        return self.raw[_HEADER.size + len(self.imei) :]


def decode_udp_datagram(data: bytes, *, io16_group: bool = False) -> UdpDatagram:
    """Decode and validate one datagram; raises TeltonikaDecodeError when it must be dropped.

    ``io16_group=True`` forces the 16-byte IO group; by default it is detected.
    """
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
        raise TeltonikaDecodeError(
            f"codec {codec_name(codec)} is not an AVL codec (7, 8, 8E, 16)"
        )
    end = len(data)
    if io16_group:
        frame = AvlFrame(codec, decode_avl_span(data, body_start, end, io16_group), data)
    else:
        # A tracker's datagrams repeat one layout, as its TCP frames do (same body).
        learned = decode_learned(data, body_start, end)
        if learned is not None:
            frame = AvlFrame.from_learned(codec, learned, data)
        else:
            records = decode_avl_span(data, body_start, end)
            learn(data, body_start, end, records)
            frame = AvlFrame(codec, records, data)
    return UdpDatagram(packet_id, avl_packet_id, digits.decode("ascii"), codec, frame, data)


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
    unused_byte: int = 1,
) -> bytes:
    """A device → server datagram (for simulators and tests)."""
    body = encode_avl_body(codec, records, io16_group=io16_group)
    imei_bytes = imei.encode("ascii")
    if not (imei.isdigit() and imei.isascii() and 1 <= len(imei) <= IMEI_MAX_LENGTH):
        raise ValueError(f"IMEI must be 1..{IMEI_MAX_LENGTH} ASCII digits, got {imei!r}")
    rest = (
        _HEADER.pack(0, packet_id, unused_byte, avl_packet_id, len(imei_bytes))[2:]
        + imei_bytes
        + body
    )
    if len(rest) > 0xFFFF:
        raise ValueError(f"datagram of {len(rest) + 2} bytes; the length field is u16")
    return len(rest).to_bytes(2, "big") + rest


# -- duplicate detection ----------------------------------------------------------------------


class Verdict(Enum):
    """What :meth:`UdpDuplicateFilter.check` says about a datagram."""

    NEW = "new"  # store it, then call confirm() (ack) or release() (no ack)
    IN_FLIGHT = "in_flight"  # its first copy is still being stored: drop, do not ack yet
    DUPLICATE = "duplicate"  # already stored and acked: ack again, do not store


_Key = tuple[str, int]


class UdpDuplicateFilter:
    """Recognises resent datagrams: same IMEI and AVL packet id, same records, in a window.

    The AVL packet id is one byte and devices count it up per packet, so the id alone
    repeats every 256 packets; the records (the datagram's body) must match too. Use::

        verdict = dedup.check(datagram, now)
        NEW        -> accept the records; dedup.confirm(datagram, now) and ack,
                      or dedup.release(datagram) when they were not accepted (no ack)
        IN_FLIGHT  -> drop without an ack: the first copy's ack is on its way
        DUPLICATE  -> ack again (the device lost the ack); do not store

    ``now`` is any monotonic clock in seconds. A confirmed datagram is remembered for
    ``window_s`` after its last sighting; memory is bounded by ``max_entries`` (the least
    recently seen entry goes first), so a flood of distinct datagrams cannot grow it.
    """

    def __init__(self, window_s: float = 300.0, max_entries: int = 100_000) -> None:
        if window_s <= 0 or max_entries < 1:
            raise ValueError("window_s must be > 0 and max_entries >= 1")
        self.window_s = window_s
        self.max_entries = max_entries
        # key -> (last seen, body digest, confirmed); ordered by last sighting.
        self._entries: OrderedDict[_Key, tuple[float, int, bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, datagram: UdpDatagram, now: float) -> Verdict:
        """Classify ``datagram``; a NEW one is remembered as in flight."""
        self._expire(now)
        key = (datagram.imei, datagram.avl_packet_id)
        digest = hash(datagram.body)
        entry = self._entries.get(key)
        if entry is not None and entry[1] == digest:
            self._entries[key] = (now, digest, entry[2])
            self._entries.move_to_end(key)
            return Verdict.DUPLICATE if entry[2] else Verdict.IN_FLIGHT
        self._entries[key] = (now, digest, False)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return Verdict.NEW

    def confirm(self, datagram: UdpDatagram, now: float) -> None:
        """The records are safe (and acked): a resend within the window is a duplicate."""
        key = (datagram.imei, datagram.avl_packet_id)
        self._entries[key] = (now, hash(datagram.body), True)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def release(self, datagram: UdpDatagram) -> None:
        """The records were not accepted (no ack): the resend must be stored."""
        key = (datagram.imei, datagram.avl_packet_id)
        entry = self._entries.get(key)
        if entry is not None and not entry[2] and entry[1] == hash(datagram.body):
            del self._entries[key]

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        entries = self._entries
        while entries:
            key, (seen, _digest, _confirmed) = next(iter(entries.items()))
            if seen >= horizon:
                return
            del entries[key]
