"""Codec 7: the GH3000 record format (spec section 6), decoded and encoded.

A GH3000 record is compact and mask-driven::

    u32   time: top 2 bits priority, low 30 bits seconds since 2007-01-01T00:00:00Z
    u8    global mask: bit 0 GPS element, bits 1/2/3 the 1-, 2-, 4-byte IO groups
    [GPS element]  u8 mask, then per bit: 0 lat+lon (float32 each, latitude first),
                   1 altitude u16, 2 angle u8 (x 360/256 degrees), 3 speed u8 km/h,
                   4 satellites u8, 5 LAC u16 + cell id u16, 6 signal quality u8,
                   7 operator u32
    [IO groups]    count u8, then (id u8, value of 1/2/4 bytes); no 8-byte group

Records become :class:`Gh3000Record` (an :class:`AvlRecord`), so everything downstream
treats them like any AVL record; they are acked like codec 8. Coordinates are float32 on
the wire: the decoder returns the shortest decimal that is the same float32 (44.7913055,
not 44.79130554199219), which the encoder turns back into the same four bytes. A
coordinate that is not a finite number is refused (:class:`ImpossibleValueError`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from struct import Struct
from typing import Final

from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.model import (
    CODEC_7,
    GH_GLOBAL_GPS,
    GH_GLOBAL_IO,
    GH_GPS_ALTITUDE,
    GH_GPS_ANGLE,
    GH_GPS_CELL,
    GH_GPS_LATLON,
    GH_GPS_OPERATOR,
    GH_GPS_SATELLITES,
    GH_GPS_SIGNAL,
    GH_GPS_SPEED,
    AvlRecord,
    Gh3000Record,
)

GH_EPOCH_S: Final = 1_167_609_600  # 2007-01-01T00:00:00Z
_SECONDS_MASK: Final = 0x3FFF_FFFF
ANGLE_STEP: Final = 360 / 256  # 1.40625, exact in binary

_U16: Final = Struct(">H")
_U32: Final = Struct(">I")
_F32: Final = Struct(">f")
_LATLON: Final = Struct(">ff")
_VALUE_FORMATS: Final = ("B", "H", "I")
_VALUE_SIZES: Final = (1, 2, 4)


def shortest_float32(value: float) -> float:
    """The shortest decimal whose float32 is the float32 of ``value``.

    Searched from the float32 itself, so every value of one float32 gives one answer.
    """
    packed = _F32.pack(value)
    value = _F32.unpack(packed)[0]
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return value  # pragma: no cover - 9 significant digits always round-trip a float32


def decode_gh3000_span(
    buf: bytes | bytearray | memoryview, start: int, end: int
) -> tuple[AvlRecord, ...]:
    """Records of the codec 7 body at ``buf[start:end]`` (codec byte through N2)."""
    count = buf[start + 1]
    last = end - 1
    if buf[last] != count:
        raise TeltonikaDecodeError(f"N1 ({count}) != N2 ({buf[last]})")
    pos = start + 2
    records: list[AvlRecord] = []
    for index in range(count):
        reader = _Reader(buf, pos, last, index, count, start)
        records.append(_decode_record(reader))
        pos = reader.pos
    if pos != last:
        raise TeltonikaDecodeError(
            f"{count} record(s) end at body byte {pos - start} but N2 is at byte {last - start}"
        )
    return tuple(records)


class _Reader:
    """Bounds-checked big-endian reads up to N2 (a record must never read N2 itself)."""

    __slots__ = ("buf", "count", "index", "last", "pos", "start")

    def __init__(  # noqa: PLR0917 - a private helper with one caller
        self, buf: bytes | bytearray | memoryview, pos: int, last: int, index: int,
        count: int, start: int,
    ) -> None:
        self.buf = buf
        self.pos = pos
        self.last = last
        self.index = index
        self.count = count
        self.start = start

    def take(self, size: int) -> int:
        """Advance by ``size``; return where the field starts."""
        at = self.pos
        stop = at + size
        if stop > self.last:
            raise TeltonikaDecodeError(
                f"record {self.index + 1} of {self.count} runs past N2 "
                f"(needs body byte {stop - self.start}, N2 is at byte {self.last - self.start})"
            )
        self.pos = stop
        return at

    def u8(self) -> int:
        return self.buf[self.take(1)]

    def u16(self) -> int:
        return int(_U16.unpack_from(self.buf, self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.buf, self.take(4))[0])


def _decode_record(r: _Reader) -> Gh3000Record:
    stamp = r.u32()
    priority = stamp >> 30
    timestamp_ms = ((stamp & _SECONDS_MASK) + GH_EPOCH_S) * 1000
    global_mask = r.u8()
    latitude = longitude = 0.0
    altitude = satellites = speed = 0
    angle = 0.0
    gps_mask = 0
    lac = cell_id = signal = operator = None
    if global_mask & GH_GLOBAL_GPS:
        gps_mask = r.u8()
        if gps_mask & GH_GPS_LATLON:
            lat, lon = _LATLON.unpack_from(r.buf, r.take(8))
            if not (math.isfinite(lat) and math.isfinite(lon)):
                raise ImpossibleValueError(
                    f"record {r.index + 1} of {r.count}: coordinates {lat}, {lon} are not numbers"
                )
            latitude, longitude = shortest_float32(lat), shortest_float32(lon)
        if gps_mask & GH_GPS_ALTITUDE:
            altitude = r.u16()
        if gps_mask & GH_GPS_ANGLE:
            angle = r.u8() * ANGLE_STEP
        if gps_mask & GH_GPS_SPEED:
            speed = r.u8()
        if gps_mask & GH_GPS_SATELLITES:
            satellites = r.u8()
        if gps_mask & GH_GPS_CELL:
            lac = r.u16()
            cell_id = r.u16()
        if gps_mask & GH_GPS_SIGNAL:
            signal = r.u8()
        if gps_mask & GH_GPS_OPERATOR:
            operator = r.u32()
    io: dict[int, int | bytes] = {}
    groups = [0, 0, 0, 0, 0, 0]
    for width_index, bit in enumerate(GH_GLOBAL_IO):
        if not global_mask & bit:
            continue
        n = r.u8()
        group = Struct(">" + ("B" + _VALUE_FORMATS[width_index]) * n)
        flat = group.unpack_from(r.buf, r.take(group.size))
        it = iter(flat)
        io.update(zip(it, it, strict=True))
        groups[width_index] = n
    return Gh3000Record(
        timestamp_ms, priority, longitude, latitude, altitude, angle, satellites, speed, 0,
        io, None, (groups[0], groups[1], groups[2], 0, 0, 0),
        global_mask, gps_mask, lac, cell_id, signal, operator,
    )


# -- encoding ------------------------------------------------------------------------------


def encode_gh3000_body(records: Sequence[AvlRecord]) -> bytes:
    """Codec 7 body (codec byte through N2) for ``records``; the inverse of the decoder.

    Plain :class:`AvlRecord` values are sent with the default masks (GPS element with
    position, altitude, angle, speed, satellites; all three IO groups). Raises ValueError
    for anything codec 7 cannot carry.
    """
    if len(records) > 255:
        raise ValueError(f"{len(records)} records; N1 is one byte (at most 255)")
    parts = [bytes((CODEC_7, len(records)))]
    parts.extend(_encode_record(_as_gh3000(record)) for record in records)
    parts.append(bytes((len(records),)))
    return b"".join(parts)


def _as_gh3000(record: AvlRecord) -> Gh3000Record:
    if isinstance(record, Gh3000Record):
        return record
    return Gh3000Record(
        record.timestamp_ms, record.priority, record.longitude, record.latitude,
        record.altitude, record.angle, record.satellites, record.speed, record.event_io_id,
        record.io, record.generation_type, record.io_groups,
    )


def _encode_record(rec: Gh3000Record) -> bytes:
    seconds, millis = divmod(rec.timestamp_ms, 1000)
    seconds -= GH_EPOCH_S
    if millis or not 0 <= seconds <= _SECONDS_MASK:
        raise ValueError(
            f"codec 7 time {rec.timestamp_ms} ms must be whole seconds from 2007-01-01 "
            f"to 2007 + 2**30 s"
        )
    if not 0 <= rec.priority <= 3:
        raise ValueError(f"codec 7 priority {rec.priority} must be 0..3 (two bits)")
    if rec.event_io_id or rec.generation_type is not None:
        raise ValueError("codec 7 records have no event IO id and no generation type")
    global_mask, gps_mask = rec.global_mask, rec.gps_mask
    if not 0 <= global_mask <= 0xFF or not 0 <= gps_mask <= 0xFF:
        raise ValueError("codec 7 masks are single bytes")
    out = bytearray(_U32.pack((rec.priority << 30) | seconds))
    out.append(global_mask)
    has_gps = bool(global_mask & GH_GLOBAL_GPS)
    cell = (rec.lac, rec.cell_id)
    if has_gps:
        out.append(gps_mask)
    elif gps_mask or any(v is not None for v in (*cell, rec.signal_quality, rec.operator)):
        raise ValueError("codec 7 GPS fields need the GPS element (global mask bit 0)")
    bits = gps_mask if has_gps else 0
    if bits & GH_GPS_LATLON:
        if not (math.isfinite(rec.latitude) and math.isfinite(rec.longitude)):
            raise ValueError("codec 7 coordinates must be finite")
        out += _LATLON.pack(rec.latitude, rec.longitude)
    if bits & GH_GPS_ALTITUDE:
        out += _u16(rec.altitude, "altitude")
    if bits & GH_GPS_ANGLE:
        steps = rec.angle / ANGLE_STEP
        if steps != int(steps) or not 0 <= steps <= 255:
            raise ValueError(f"codec 7 angle {rec.angle} is not a multiple of 360/256 below 360")
        out.append(int(steps))
    if bits & GH_GPS_SPEED:
        out.append(_u8(rec.speed, "speed"))
    if bits & GH_GPS_SATELLITES:
        out.append(_u8(rec.satellites, "satellites"))
    if bits & GH_GPS_CELL:
        if rec.lac is None or rec.cell_id is None:
            raise ValueError("codec 7 GPS mask bit 5 needs lac and cell_id")
        out += _u16(rec.lac, "lac") + _u16(rec.cell_id, "cell id")
    elif any(v is not None for v in cell):
        raise ValueError("codec 7 lac/cell_id need GPS mask bit 5")
    if bits & GH_GPS_SIGNAL:
        if rec.signal_quality is None:
            raise ValueError("codec 7 GPS mask bit 6 needs signal_quality")
        out.append(_u8(rec.signal_quality, "signal quality"))
    elif rec.signal_quality is not None:
        raise ValueError("codec 7 signal_quality needs GPS mask bit 6")
    if bits & GH_GPS_OPERATOR:
        if rec.operator is None or not 0 <= rec.operator <= 0xFFFF_FFFF:
            raise ValueError("codec 7 GPS mask bit 7 needs an operator code (u32)")
        out += _U32.pack(rec.operator)
    elif rec.operator is not None:
        raise ValueError("codec 7 operator needs GPS mask bit 7")
    for width_index, group in enumerate(_io_groups(rec)):
        if not global_mask & GH_GLOBAL_IO[width_index]:
            if group:
                raise ValueError(
                    f"codec 7 {_VALUE_SIZES[width_index]}-byte IO values need global mask "
                    f"bit {width_index + 1}"
                )
            continue
        out.append(_u8(len(group), "IO count"))
        value_format = ">B" + _VALUE_FORMATS[width_index]
        for key, value in group:
            out += Struct(value_format).pack(key, value)
    return bytes(out)


def _io_groups(rec: AvlRecord) -> list[list[tuple[int, int]]]:
    """Elements per 1-, 2-, 4-byte group: the recorded layout, else the smallest width."""
    items = list(rec.io.items())
    layout = rec.io_groups
    if layout is not None and sum(layout) == len(items) and not any(layout[3:]):
        it = iter(items)
        return [[_checked(*next(it), width) for _ in range(layout[width])] for width in range(3)]
    groups: list[list[tuple[int, int]]] = [[], [], []]
    for key, value in items:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF_FFFF:
            raise ValueError(f"IO {key}={value!r}: codec 7 carries integers of up to 4 bytes")
        width = 0 if value <= 0xFF else 1 if value <= 0xFFFF else 2
        groups[width].append(_checked(key, value, width))
    return groups


def _checked(key: int, value: int | bytes, width_index: int) -> tuple[int, int]:
    limit = (0xFF, 0xFFFF, 0xFFFF_FFFF)[width_index]
    if not isinstance(value, int) or not 0 <= value <= limit or not 0 <= key <= 0xFF:
        raise ValueError(f"IO {key}={value!r} does not fit a codec 7 group")
    return key, value


def _u8(value: int, name: str) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"codec 7 {name} {value} does not fit one byte")
    return value


def _u16(value: int, name: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"codec 7 {name} {value} does not fit u16")
    return _U16.pack(value)
