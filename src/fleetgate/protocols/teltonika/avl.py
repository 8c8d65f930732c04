"""AVL record bodies of codecs 8, 8 Extended and 16 (spec section 5): decode and encode.

A *body* is what the TCP data-length field counts: codec byte, N1, the records, N2. The
decoder is strict (spec section 8): N1 must equal N2 and the records must end exactly at
N2; anything else raises :class:`TeltonikaDecodeError`. A device time past
9999-12-31T23:59:59.999Z (which includes every value of 2**63 ms and more) raises
:class:`ImpossibleValueError`: the frame is refused like a CRC mismatch. Codec 7 (GH3000)
bodies are handed to :mod:`.gh3000`, so callers have one entry point for every AVL codec.

Field widths per codec (the part implementations get wrong, spec 5.2):

=========  =========  ==========  =========  ========  ==============================
codec      event id   gen. type   counts     IO ids    after the 8-byte group
=========  =========  ==========  =========  ========  ==============================
8          u8         -           u8         u8        [16-byte group]
8E         u16        -           u16        u16       [16-byte group], NX group
16         u16        u8          u8         u16       [16-byte group]
=========  =========  ==========  =========  ========  ==============================

The 16-byte group (Traccar's "extended" option, some older FM devices) is not announced
anywhere in the frame; :func:`decode_avl_span` detects it per frame.

Speed matters here (it runs once per record on the ingest path): each IO group is read
with one precompiled :class:`struct.Struct` of ``count`` (id, value) pairs, so a record
costs a handful of C calls however many elements it has.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Sequence
from struct import Struct
from typing import Final

from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.gh3000 import decode_gh3000_span, encode_gh3000_body
from fleetgate.protocols.teltonika.model import (
    AVL_CODECS,
    CODEC_7,
    CODEC_8,
    CODEC_8E,
    CODEC_16,
    MAX_TIMESTAMP_MS,
    AvlRecord,
    codec_name,
)

# Record header (spec 5.1) + event id [+ generation type] + total IO count, per codec.
# Altitude is signed ("h"), longitude before latitude.
_HEADERS: Final = {
    CODEC_8: Struct(">QBiihHBHBB"),
    CODEC_8E: Struct(">QBiihHBHHH"),
    CODEC_16: Struct(">QBiihHBHHBB"),
}
_HEADER_ONLY: Final = Struct(">QBiihHBH")

# Group structs for up to this many elements are cached once first used (520 built at
# import cost ~1 MiB of idle memory); larger groups (rare: a packet is normally < 1280
# bytes) get a Struct built on the spot.
_CACHED_PAIRS: Final = 64
_VALUE_FORMATS: Final = "BHIQ"  # 1-, 2-, 4-, 8-byte values, in wire order


class _PairStructs(dict[int, Struct]):
    """n -> Struct for n (id, value) pairs of one id and value width, built on first use."""

    def __init__(self, pair_format: str) -> None:
        super().__init__()
        self.pair_format = pair_format

    def __missing__(self, n: int) -> Struct:
        group = self[n] = Struct(">" + self.pair_format * n)
        return group


# id width -> one table per value width -> Struct for n pairs.
_PAIRS: Final = {
    "B": tuple(_PairStructs("B" + v) for v in _VALUE_FORMATS),
    "H": tuple(_PairStructs("H" + v) for v in _VALUE_FORMATS),
}

_EMPTY_GROUPS: Final = (0, 0, 0, 0, 0, 0)
_ID_STR_FORMAT: Final = {CODEC_8: "B", CODEC_8E: "H", CODEC_16: "H"}


def _fast_constructor() -> Callable[..., AvlRecord]:
    """A positional AvlRecord constructor that skips the frozen dataclass ``__init__``.

    A frozen dataclass sets each field through ``object.__setattr__``; with twelve fields
    that is ~40 % of the cost of decoding a typical record. Writing the slot descriptors
    directly gives the same object (still frozen for everyone else) in half the time.
    The field list is checked here so a field added to AvlRecord cannot be left unset.
    """
    names = tuple(f.name for f in dataclasses.fields(AvlRecord))
    if names != _RECORD_FIELDS:  # pragma: no cover - guards future model edits
        raise RuntimeError(f"AvlRecord fields changed to {names}; update avl._RECORD_FIELDS")
    setters = [getattr(AvlRecord, name).__set__ for name in names]
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11 = setters
    new = object.__new__

    def make(  # noqa: PLR0917 - positional on purpose: this is the hot path
        ts: int, pri: int, lon: float, lat: float, alt: int, angle: int, sats: int,
        speed: int, event: int, io: dict[int, int | bytes], generation: int | None,
        groups: tuple[int, int, int, int, int, int],
    ) -> AvlRecord:
        rec: AvlRecord = new(AvlRecord)
        s0(rec, ts)
        s1(rec, pri)
        s2(rec, lon)
        s3(rec, lat)
        s4(rec, alt)
        s5(rec, angle)
        s6(rec, sats)
        s7(rec, speed)
        s8(rec, event)
        s9(rec, io)
        s10(rec, generation)
        s11(rec, groups)
        return rec

    return make


_RECORD_FIELDS: Final = (
    "timestamp_ms", "priority", "longitude", "latitude", "altitude", "angle", "satellites",
    "speed", "event_io_id", "io", "generation_type", "io_groups",
)
_new_record: Final = _fast_constructor()


def decode_avl_body(
    body: bytes | bytearray | memoryview, codec: int, *, io16_group: bool = False
) -> tuple[AvlRecord, ...]:
    """Records of one AVL body (codec byte through N2).

    ``codec`` is the codec the caller expects; it must match the body's first byte.
    ``io16_group`` forces Traccar's "extended" group of 16-byte values after the 8-byte
    group (older FM devices, spec 5.2); without it the group is detected (see
    :func:`decode_avl_span`).
    """
    if len(body) < 3:
        raise TeltonikaDecodeError(f"AVL body is {len(body)} bytes; at least 3 needed")
    if body[0] != codec:
        raise TeltonikaDecodeError(
            f"body starts with codec 0x{body[0]:02x}, expected 0x{codec:02x}"
        )
    return decode_avl_span(body, 0, len(body), io16_group)


def decode_avl_span(
    buf: bytes | bytearray | memoryview, start: int, end: int, io16_group: bool = False
) -> tuple[AvlRecord, ...]:
    """Decode the AVL body at ``buf[start:end]`` without slicing it out first.

    The TCP connection calls this on the whole frame (``start`` = 8, after preamble and
    length) so a frame is copied exactly once, when it leaves the receive buffer.

    16-byte IO groups are detected per frame: the body is read with the standard layout
    first and, only if that does not end exactly at N2, again with a 16-byte group after
    the 8-byte one; the first reading that fits is the frame. A device's very first
    frame therefore decodes with no model configured, and standard frames cost nothing
    extra. When neither fits, the error of the standard reading is raised.
    ``io16_group=True`` skips the standard reading (callers that know the device).
    """
    codec = buf[start]
    if codec == CODEC_7:
        return decode_gh3000_span(buf, start, end)
    header = _HEADERS.get(codec)
    if header is None:
        raise TeltonikaDecodeError(
            f"codec {codec_name(codec)} is not an AVL codec (7, 8, 8E, 16)"
        )
    count = buf[start + 1]
    if buf[end - 1] != count:
        raise TeltonikaDecodeError(f"N1 ({count}) != N2 ({buf[end - 1]})")
    if io16_group:
        return _decode_records(buf, start, end, header, True)
    try:
        return _decode_records(buf, start, end, header, False)
    except TeltonikaDecodeError as standard:
        try:
            return _decode_records(buf, start, end, header, True)
        except TeltonikaDecodeError:
            raise standard from None


def _decode_records(
    buf: bytes | bytearray | memoryview, start: int, end: int, header: Struct, io16: bool
) -> tuple[AvlRecord, ...]:
    codec = buf[start]
    count = buf[start + 1]
    last = end - 1  # index of N2: the records must end exactly here
    wide_counts = codec == CODEC_8E
    codec16 = codec == CODEC_16
    tables = _PAIRS[_ID_STR_FORMAT[codec]]
    hsize = header.size
    unpack_header = header.unpack_from
    pos = start + 2
    records: list[AvlRecord] = []
    append = records.append
    generation: int | None = None
    max_ts = MAX_TIMESTAMP_MS
    for index in range(count):
        if pos + hsize > last:
            raise _truncated(index, count, pos + hsize, last, start)
        fields = unpack_header(buf, pos)
        pos += hsize
        if codec16:
            ts, pri, lon, lat, alt, angle, sats, speed, event, generation, _total = fields
        else:
            ts, pri, lon, lat, alt, angle, sats, speed, event, _total = fields
        if ts > max_ts:
            raise ImpossibleValueError(
                f"record {index + 1} of {count}: device time {ts} ms is past "
                "9999-12-31T23:59:59.999Z"
            )
        # N (the total) is ignored: records are sized from the group counts (spec 5.2).
        # The four fixed-width groups are unpacked into one flat (id, value, ...) tuple
        # and turned into the dict in one go: cheaper than four dict updates.
        flat: tuple[int, ...] = ()
        groups = [0, 0, 0, 0, 0, 0]
        for width_index in range(4):
            if wide_counts:
                if pos + 2 > last:
                    raise _truncated(index, count, pos + 2, last, start)
                n = (buf[pos] << 8) | buf[pos + 1]
                pos += 2
            else:
                if pos >= last:
                    raise _truncated(index, count, pos + 1, last, start)
                n = buf[pos]
                pos += 1
            if n:
                group = tables[width_index][n] if n <= _CACHED_PAIRS else _big_group(
                    codec, width_index, n
                )
                stop = pos + group.size
                if stop > last:
                    raise _truncated(index, count, stop, last, start)
                flat += group.unpack_from(buf, pos)
                pos = stop
                groups[width_index] = n
        it = iter(flat)
        io: dict[int, int | bytes] = dict(zip(it, it, strict=True))
        wide: list[tuple[int, bytes]] | None = None
        if io16:
            # Traccar's "extended" group, on the wire right after the 8-byte group; its
            # elements go into ``io`` last, matching io_groups' order.
            wide = []
            pos = _read_io16(buf, pos, last, wide, codec=codec, index=index, count=count,
                             start=start)
            groups[5] = len(wide)
        if wide_counts:
            # NX group: count u16, then (id u16, length u16, value) elements.
            if pos + 2 > last:
                raise _truncated(index, count, pos + 2, last, start)
            n = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
            for _ in range(n):
                if pos + 4 > last:
                    raise _truncated(index, count, pos + 4, last, start)
                key = (buf[pos] << 8) | buf[pos + 1]
                stop = pos + 4 + ((buf[pos + 2] << 8) | buf[pos + 3])
                if stop > last:
                    raise _truncated(index, count, stop, last, start)
                io[key] = bytes(buf[pos + 4 : stop])
                pos = stop
            groups[4] = n
        if wide:
            io.update(wide)
        append(
            _new_record(
                ts, pri, lon / 10_000_000, lat / 10_000_000, alt, angle, sats, speed,
                event, io, generation, tuple(groups) if io else _EMPTY_GROUPS,
            )
        )
    if pos != last:
        raise TeltonikaDecodeError(
            f"{count} record(s) end at body byte {pos - start} but N2 is at byte {last - start}"
        )
    return tuple(records)


def _read_io16(
    buf: bytes | bytearray | memoryview,
    pos: int,
    last: int,
    out: list[tuple[int, bytes]],
    *,
    codec: int,
    index: int,
    count: int,
    start: int,
) -> int:
    wide_counts = codec == CODEC_8E
    wide_ids = codec != CODEC_8
    step = 2 if wide_counts else 1
    if pos + step > last:
        raise _truncated(index, count, pos + step, last, start)
    n = (buf[pos] << 8) | buf[pos + 1] if wide_counts else buf[pos]
    pos += step
    id_size = 2 if wide_ids else 1
    for _ in range(n):
        stop = pos + id_size + 16
        if stop > last:
            raise _truncated(index, count, stop, last, start)
        key = (buf[pos] << 8) | buf[pos + 1] if wide_ids else buf[pos]
        out.append((key, bytes(buf[pos + id_size : stop])))
        pos = stop
    return pos


def _big_group(codec: int, width_index: int, n: int) -> Struct:
    id_format = _ID_STR_FORMAT[codec]
    return Struct(">" + (id_format + _VALUE_FORMATS[width_index]) * n)


def _truncated(index: int, count: int, need: int, last: int, start: int) -> TeltonikaDecodeError:
    return TeltonikaDecodeError(
        f"record {index + 1} of {count} runs past N2 "
        f"(needs body byte {need - start}, N2 is at byte {last - start})"
    )


# -- encoding ------------------------------------------------------------------------------

_WIDTH_LIMITS: Final = ((1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, 0xFFFF_FFFF_FFFF_FFFF))
_WIDTH_INDEX: Final = {1: 0, 2: 1, 4: 2, 8: 3}


def encode_avl_body(
    codec: int, records: Sequence[AvlRecord], *, io16_group: bool = False
) -> bytes:
    """Body (codec byte through N2) carrying ``records``; the inverse of decode_avl_body.

    Codec 7 goes to :func:`~.gh3000.encode_gh3000_body`. A record's ``io_groups`` (set by
    the decoder) reproduces the original layout exactly;
    without it each integer goes into the smallest group that holds it and ``bytes``
    values go to the 16-byte group (16 bytes, with ``io16_group``) or else the NX group
    (8E).
    Raises ValueError for anything the codec cannot carry.
    """
    if codec not in AVL_CODECS:
        raise ValueError(f"codec {codec_name(codec)} is not an AVL codec (7, 8, 8E, 16)")
    if codec == CODEC_7:
        if io16_group:
            raise ValueError("codec 7 has no 16-byte IO group")
        return encode_gh3000_body(records)
    if len(records) > 255:
        raise ValueError(f"{len(records)} records; N1 is one byte (at most 255)")
    parts = [bytes((codec, len(records)))]
    parts.extend(_encode_record(codec, record, io16_group) for record in records)
    parts.append(bytes((len(records),)))
    return b"".join(parts)


def _layout(
    codec: int, record: AvlRecord, io16_group: bool
) -> list[list[tuple[int, int | bytes]]]:
    """Elements per group: 1-, 2-, 4-, 8-byte, NX, 16-byte."""
    items = list(record.io.items())
    groups: list[list[tuple[int, int | bytes]]] = [[], [], [], [], [], []]
    layout = record.io_groups
    if layout is not None and sum(layout) == len(items):
        it = iter(items)
        for group, n in zip(groups, layout, strict=True):
            group.extend(next(it) for _ in range(n))
    else:
        for key, value in items:
            if isinstance(value, bytes):
                if io16_group and len(value) == 16:
                    groups[5].append((key, value))
                elif codec == CODEC_8E:
                    groups[4].append((key, value))
                else:
                    raise ValueError(
                        f"IO {key}: a {len(value)}-byte value needs codec 8E (NX) "
                        "or io16_group with 16 bytes"
                    )
                continue
            for width, limit in _WIDTH_LIMITS:
                if 0 <= value <= limit:
                    groups[_WIDTH_INDEX[width]].append((key, value))
                    break
            else:
                raise ValueError(f"IO {key}: value {value} does not fit an unsigned u64")
    if groups[4] and codec != CODEC_8E:
        raise ValueError(f"codec {codec_name(codec)} has no NX group")
    if groups[5] and not io16_group:
        raise ValueError("16-byte IO values need io16_group=True")
    return groups


def _encode_record(codec: int, record: AvlRecord, io16_group: bool) -> bytes:
    wide_counts = codec == CODEC_8E
    id_limit = 0xFF if codec == CODEC_8 else 0xFFFF
    count_format = ">H" if wide_counts else ">B"
    id_format = "B" if codec == CODEC_8 else "H"
    groups = _layout(codec, record, io16_group)
    total = sum(len(g) for g in groups)
    count_limit = 0xFFFF if wide_counts else 0xFF
    if total > count_limit:
        raise ValueError(
            f"{total} IO elements; codec {codec_name(codec)} counts up to {count_limit}"
        )
    if not 0 <= record.event_io_id <= id_limit:
        raise ValueError(
            f"event IO id {record.event_io_id} does not fit codec {codec_name(codec)}"
        )
    if not isinstance(record.angle, int):
        raise ValueError(f"angle {record.angle}: codec {codec_name(codec)} sends whole degrees")
    try:
        header = _HEADER_ONLY.pack(
            record.timestamp_ms,
            record.priority,
            round(record.longitude * 10_000_000),
            round(record.latitude * 10_000_000),
            record.altitude,
            record.angle,
            record.satellites,
            record.speed,
        )
    except struct.error as exc:
        raise ValueError(f"record header does not fit codec {codec_name(codec)}: {exc}") from None
    out = bytearray(header)
    if codec == CODEC_8:
        out += bytes((record.event_io_id, total))
    elif codec == CODEC_8E:
        out += record.event_io_id.to_bytes(2, "big") + total.to_bytes(2, "big")
    else:
        generation = record.generation_type or 0
        out += record.event_io_id.to_bytes(2, "big") + bytes((generation, total))
    for width_index, group in enumerate(groups[:4]):
        out += Struct(count_format).pack(len(group))
        value_format = _VALUE_FORMATS[width_index]
        for key, value in group:
            if not isinstance(value, int) or not 0 <= key <= id_limit:
                raise ValueError(f"IO {key}={value!r} does not fit its group")
            out += Struct(">" + id_format + value_format).pack(key, value)
    if io16_group:
        # Right after the 8-byte group, before NX (as Traccar reads it).
        out += Struct(count_format).pack(len(groups[5]))
        for key, value in groups[5]:
            if not isinstance(value, bytes) or len(value) != 16 or not 0 <= key <= id_limit:
                raise ValueError(f"16-byte IO {key} must be exactly 16 bytes")
            out += Struct(">" + id_format).pack(key) + value
    if codec == CODEC_8E:
        out += len(groups[4]).to_bytes(2, "big")
        for key, value in groups[4]:
            if not isinstance(value, bytes) or len(value) > 0xFFFF:
                raise ValueError(f"NX IO {key} must be bytes of at most 65535")
            out += key.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value
    return bytes(out)
