"""Pre-encoded frames whose record timestamps move forward with every send.

A load generator resends a small pool of pre-encoded frames. With the pool's fixed
timestamps each tracker would send the same few dozen times over and over. The store
indexes each device's records by time, so every commit would then insert into the middle of
each device's index, touching tens of pages per device. A real tracker's clock only moves
forward, so its records are appended at the end of its index. In a long benchmark that
difference alone doubled the store's disk writes per record and cut the sustained rate.

:class:`StampedFrame` writes fresh timestamps into a copy of a frame, plus the CRC. That is a
few microseconds per frame instead of a re-encode, so the generator stays cheap.
:class:`StampedVehicleFrame` does the same for a Tesla ``V`` frame: the payload's
``created_at`` seconds are a 5-byte varint for every second from 1978 to 3058, so a new
second fits in the old one's bytes (the envelope has no checksum).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from fleetgate.protocols.teltonika.avl import encode_avl_body
from fleetgate.protocols.teltonika.crc import crc16_ibm
from fleetgate.protocols.teltonika.encoder import encode_avl_frame
from fleetgate.protocols.teltonika.model import CODEC_7, AvlRecord

# Preamble (4 zero bytes) and data length (4): the CRC covers what follows, up to itself.
_HEAD = 8
# Codec id and record count before the first record.
_BODY_HEAD = 2
_TIMESTAMP = struct.Struct(">Q")
_CRC = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class StampedFrame:
    """An encoded TCP AVL frame and where each record's timestamp sits in it."""

    frame: bytes
    timestamp_offsets: tuple[int, ...]

    @classmethod
    def encode(
        cls, codec: int, records: Sequence[AvlRecord], *, io16_group: bool = False
    ) -> StampedFrame:
        frame = encode_avl_frame(codec, records, io16_group=io16_group)
        if codec == CODEC_7:
            # A GH3000 record keeps its time in 30 bits of seconds next to its priority;
            # its (rare) frames are sent as encoded.
            return cls(frame, ())
        offsets = []
        offset = _HEAD + _BODY_HEAD
        for record in records:
            offsets.append(offset)
            # A one-record body is the codec id, the count, the record and the count again.
            one = encode_avl_body(codec, [record], io16_group=io16_group)
            offset += len(one) - 2 * _BODY_HEAD + 1
        return cls(frame, tuple(offsets))

    @property
    def records(self) -> int:
        return len(self.timestamp_offsets)

    def stamped(self, first_ms: int, step_ms: int) -> bytes:
        """The frame with its records at ``first_ms``, ``first_ms + step_ms``, ... and a
        matching CRC; everything else byte for byte the same."""
        if not self.timestamp_offsets:
            return self.frame
        buffer = bytearray(self.frame)
        pack = _TIMESTAMP.pack_into
        timestamp = first_ms
        for offset in self.timestamp_offsets:
            pack(buffer, offset, timestamp)
            timestamp += step_ms
        end = len(buffer) - _CRC.size
        _CRC.pack_into(buffer, end, crc16_ibm(memoryview(buffer)[_HEAD:end]))
        return bytes(buffer)


class TrackerClock:
    """One tracker's record clock: each frame's records follow the previous frame's."""

    __slots__ = ("next_ms", "step_ms")

    def __init__(self, start_ms: int, step_ms: int = 1000) -> None:
        self.next_ms = start_ms
        self.step_ms = step_ms

    def stamp(self, frame: StampedFrame) -> bytes:
        data = frame.stamped(self.next_ms, self.step_ms)
        self.next_ms += frame.records * self.step_ms
        return data


# Seconds in [2**28, 2**35) are varints of exactly five bytes.
_SECONDS_RANGE = range(2**28, 2**35)
# Field 2 (created_at) of vehicle_data.Payload, length-delimited.
_CREATED_AT_TAG = 0x12


def _varint5(value: int) -> bytes:
    if value not in _SECONDS_RANGE:
        raise ValueError(f"{value} s is not a 5-byte varint")
    return bytes([*((value >> shift & 0x7F) | 0x80 for shift in range(0, 28, 7)), value >> 28])


@dataclass(frozen=True, slots=True)
class StampedVehicleFrame:
    """A Tesla ``V`` frame and where its payload's ``created_at`` seconds sit in it."""

    frame: bytes
    seconds_offset: int

    @classmethod
    def locate(cls, frame: bytes, created_at_ns: int) -> StampedVehicleFrame:
        """``frame``'s payload carries ``created_at_ns``; find that Timestamp's seconds."""
        created = Timestamp()
        created.FromNanoseconds(created_at_ns)
        _varint5(created.seconds)
        encoded = created.SerializeToString()
        field = bytes([_CREATED_AT_TAG, len(encoded)]) + encoded
        at = frame.find(field)
        if at < 0 or frame.find(field, at + 1) >= 0:
            raise ValueError("the frame's created_at is not found exactly once")
        return cls(frame, at + 3)  # after the tag, the length and the seconds' own tag

    def stamped(self, seconds: int) -> bytes:
        """The frame with its payload created ``seconds`` after the epoch (same nanos)."""
        at = self.seconds_offset
        return b"".join((self.frame[:at], _varint5(seconds), self.frame[at + 5 :]))


class VehicleClock:
    """One vehicle's payload clock: each frame one second after the one before."""

    __slots__ = ("next_s",)

    def __init__(self, start_s: int) -> None:
        self.next_s = start_s

    def stamp(self, frame: StampedVehicleFrame) -> bytes:
        data = frame.stamped(self.next_s)
        self.next_s += 1
        return data
