"""The spool's on-disk entry: one frame's records, checksummed (pure functions, no I/O).

An entry is a 24-byte header and a payload::

    length   u32   payload bytes
    crc32    u32   CRC-32 of the 16 header bytes after it and of the payload
    first    u64   offset of the entry's first record
    count    u32   records in the entry
    reserved u32   0

and the payload holds ``count`` records, each a fixed part and its variable fields::

    created_at i64, received_at i64,
    lengths: source u16, device_id u16, topic u16, data u32, raw u32, meta u32
    (meta 0xFFFFFFFF = no meta; raw 0xFFFFFFFF = the same raw bytes as the record before
    it, as a frame's records all carry the frame), then those bytes in that order;
    data and meta are JSON (the record's ``data`` and ``meta``), raw is the device's bytes.

All integers are little-endian. A reader that finds a short header, a short payload, a
length over :data:`MAX_ENTRY_BYTES` or a checksum that does not match has reached a torn
or corrupt tail: :func:`read_entry` says so with :class:`TornEntry`, and everything before
it is intact.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from fleetgate.records import (
    Record,
    data_json,
    data_jsons,
    new_record,
    set_data_json,
    set_offset,
)

HEADER: Final = struct.Struct("<IIQII")
_CHECKED: Final = struct.Struct("<QII")  # the header fields the CRC covers, before payload
_FIXED: Final = struct.Struct("<qqHHHIII")
_NO_META: Final = 0xFFFFFFFF
_SAME_RAW: Final = 0xFFFFFFFF
# One frame's records: Teltonika frames are < 64 KiB, Tesla's < 1 MB; far above both.
MAX_ENTRY_BYTES: Final = 64 * 1024 * 1024
# The entry checksum is CRC-32 (zlib's). anycrc (already used for Teltonika's CRC-16)
# computes the same value in about a quarter of zlib's instructions and keeps the GIL;
# zlib.crc32 releases the GIL for buffers over 5 KiB (a 10-record Teltonika entry is about
# 5.4 KiB), and on the event loop that hands the GIL to the store's or the commit thread
# and waits for it back (up to the 5 ms switch interval) for a few microseconds of work:
# without anycrc, longer buffers are checksummed in pieces that keep it.
_CRC_PIECE: Final = 4096


class TornEntry(Exception):  # noqa: N818 - a condition the reader meets, not a bug
    """The bytes at this position are not a whole, intact entry."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One frame's records as the spool keeps them, with the offset of the first."""

    first: int
    records: Sequence[Record]

    @property
    def last(self) -> int:
        return self.first + len(self.records) - 1


class UnspoolableRecordError(ValueError):
    """A record the spool cannot write (a time beyond 64 bits, data that is not JSON)."""


def encode_entry(first: int, records: Sequence[Record]) -> bytes:
    """The bytes of one entry (header and payload)."""
    return frame_entry(first, len(records), encode_payload(records))


def frame_entry(first: int, count: int, payload: bytes) -> bytes:
    """Header and payload of the entry of ``count`` records from offset ``first``."""
    crc = _crc32(payload, zlib.crc32(_CHECKED.pack(first, count, 0)))
    return HEADER.pack(len(payload), crc, first, count, 0) + payload


def _crc32_zlib(data: bytes | memoryview, crc: int) -> int:
    """``zlib.crc32(data, crc)`` without releasing the GIL (see :data:`_CRC_PIECE`)."""
    size = len(data)
    if size <= _CRC_PIECE:
        return zlib.crc32(data, crc)
    view = memoryview(data)
    for start in range(0, size, _CRC_PIECE):
        crc = zlib.crc32(view[start : start + _CRC_PIECE], crc)
    return crc


def _load_crc32() -> Callable[[bytes | memoryview, int], int]:
    try:
        import anycrc
    except ImportError:  # pragma: no cover - anycrc is a declared dependency
        return _crc32_zlib
    calc: Callable[[bytes | memoryview, int], int] = anycrc.Model("CRC32").calc
    # Trusted only if it agrees with zlib, continuing a checksum included.
    probe = bytes(range(256)) * 3
    if calc(probe, 0) != zlib.crc32(probe) or calc(probe, 7) != zlib.crc32(probe, 7):
        return _crc32_zlib  # pragma: no cover - defensive
    return calc


#: ``zlib.crc32(data, crc)``, the same value (tests compare them), keeping the GIL.
_crc32: Final = _load_crc32()


def encode_payload(records: Sequence[Record]) -> bytes:
    """The payload of an entry; :class:`UnspoolableRecordError` if a record cannot be
    written (nothing else can store it either)."""
    try:
        return _encode_payload(records)
    except (struct.error, TypeError, OverflowError, UnicodeEncodeError) as exc:
        raise UnspoolableRecordError(str(exc)) from exc


def _encode_payload(records: Sequence[Record]) -> bytes:
    if len(records) == 1:
        return _encode_one(records[0])
    texts = data_jsons(records)
    payload = _encode_frame(records, texts)
    if payload is None:
        payload = _encode_records(records, texts)
    return payload


def _encode_frame(records: Sequence[Record], texts: Sequence[bytes]) -> bytes | None:
    """The payload of a tracker's frame, whose records share one source, device, topic
    and raw bytes (the same objects) and have no meta; None for any other frame.

    The same bytes as :func:`_encode_records` (a property test compares them), in one
    ``pack`` and two appends per record: the names are packed with the fixed part.
    """
    first = records[0]
    source, device, topic, raw = first.source, first.device_id, first.topic, first.raw
    if not raw or first.meta is not None:
        return None
    source_b, device_b, topic_b = source.encode(), device.encode(), topic.encode()
    names = source_b + device_b + topic_b
    fixed = _FIXED_NAMES.get(len(names))
    if fixed is None:
        fixed = _fixed_names(len(names))
    pack = fixed.pack
    n_source, n_device, n_topic = len(source_b), len(device_b), len(topic_b)
    text = texts[0]
    parts = [
        pack(first.created_at, first.received_at, n_source, n_device, n_topic, len(text),
             len(raw), _NO_META, names),
        text,
        raw,
    ]
    append = parts.append
    for index in range(1, len(records)):
        record = records[index]
        if (
            record.raw is not raw
            or record.source is not source
            or record.device_id is not device
            or record.topic is not topic
            or record.meta is not None
        ):
            return None
        text = texts[index]
        append(pack(record.created_at, record.received_at, n_source, n_device, n_topic,
                    len(text), _SAME_RAW, _NO_META, names))
        append(text)
    return b"".join(parts)


def _encode_one(record: Record) -> bytes:
    """The payload of a one-record frame (every Tesla frame): :func:`_encode_records`'
    bytes (a property test compares them) without its loop, its lists and its checks for
    bytes shared with a record before."""
    text = data_json(record)
    source = record.source.encode()
    device = record.device_id.encode()
    topic = record.topic.encode()
    raw = record.raw
    meta = record.meta
    if meta is None:
        return b"".join((
            _FIXED.pack(record.created_at, record.received_at, len(source), len(device),
                        len(topic), len(text), len(raw), _NO_META),
            source, device, topic, text, raw,
        ))
    meta_text = orjson.dumps(meta if meta.__class__ is dict else dict(meta))
    return b"".join((
        _FIXED.pack(record.created_at, record.received_at, len(source), len(device),
                    len(topic), len(text), len(raw), len(meta_text)),
        source, device, topic, text, raw, meta_text,
    ))


_FIXED_NAMES: Final[dict[int, struct.Struct]] = {}


def _fixed_names(size: int) -> struct.Struct:
    """The fixed part followed by ``size`` bytes of names (source, device, topic)."""
    if len(_FIXED_NAMES) >= 64:  # names come from devices: bounded
        _FIXED_NAMES.clear()
    fixed = _FIXED_NAMES[size] = struct.Struct(f"{_FIXED.format}{size}s")
    return fixed


def _encode_records(records: Sequence[Record], texts: Sequence[bytes]) -> bytes:
    """The payload of any records (``texts``: their data_json)."""
    dumps = orjson.dumps
    parts: list[bytes] = []
    append = parts.append
    extend = parts.extend
    pack = _FIXED.pack
    previous_raw = None
    # A frame's records share their source, device and topic strings: each is encoded
    # once per frame, not once per record (compared by identity, which costs nothing).
    source_text = device_text = topic_text = None
    source = device = topic = b""
    for record, data in zip(records, texts, strict=True):
        if record.source is not source_text:
            source_text = record.source
            source = source_text.encode()
        if record.device_id is not device_text:
            device_text = record.device_id
            device = device_text.encode()
        if record.topic is not topic_text:
            topic_text = record.topic
            topic = topic_text.encode()
        meta = None if record.meta is None else dumps(dict(record.meta))
        raw = record.raw
        # A frame's records share its bytes: written once per entry, not once per record.
        same_raw = bool(raw) and (raw is previous_raw or raw == previous_raw)
        previous_raw = raw
        append(
            pack(
                record.created_at,
                record.received_at,
                len(source),
                len(device),
                len(topic),
                len(data),
                _SAME_RAW if same_raw else len(raw),
                _NO_META if meta is None else len(meta),
            )
        )
        if same_raw:
            extend((source, device, topic, data))
        else:
            extend((source, device, topic, data, raw))
        if meta is not None:
            append(meta)
    return b"".join(parts)


def check_entry(buffer: bytes | memoryview, position: int) -> tuple[int, int, int]:
    """``(first, count, position after)`` of the intact entry at ``position``, without
    decoding its records; :class:`TornEntry` if there is no whole, intact entry there."""
    end = position + HEADER.size
    if end > len(buffer):
        raise TornEntry(f"short header at {position}")
    length, crc, first, count, reserved = HEADER.unpack_from(buffer, position)
    if length > MAX_ENTRY_BYTES or reserved != 0 or count == 0:
        raise TornEntry(f"implausible header at {position}")
    stop = end + length
    if stop > len(buffer):
        raise TornEntry(f"short payload at {position}")
    if _crc32(buffer[end:stop], zlib.crc32(_CHECKED.pack(first, count, 0))) != crc:
        raise TornEntry(f"checksum mismatch at {position}")
    return first, count, stop


def read_entry(buffer: bytes | memoryview, position: int) -> tuple[Entry, int]:
    """The entry at ``position`` and the position after it; :class:`TornEntry` if there is
    no whole, intact entry there."""
    first, count, stop = check_entry(buffer, position)
    payload = bytes(buffer[position + HEADER.size : stop])
    return Entry(first, decode_records(payload, first, count)), stop


def decode_records(payload: bytes, first: int, count: int) -> list[Record]:
    """The records of a checked payload, their offsets set from ``first``."""
    records: list[Record] = []
    loads = orjson.loads
    unpack = _FIXED.unpack_from
    fixed = _FIXED.size
    at = 0
    raw = b""
    try:
        for index in range(count):
            created, received, n_source, n_device, n_topic, n_data, n_raw, n_meta = unpack(
                payload, at
            )
            at += fixed
            source = payload[at : at + n_source].decode()
            at += n_source
            device = payload[at : at + n_device].decode()
            at += n_device
            topic = payload[at : at + n_topic].decode()
            at += n_topic
            data_text = payload[at : at + n_data]
            data = loads(data_text)
            at += n_data
            if n_raw != _SAME_RAW:
                raw = payload[at : at + n_raw]
                at += n_raw
            meta = None
            if n_meta != _NO_META:
                meta = loads(payload[at : at + n_meta])
                at += n_meta
            record = new_record(source, device, topic, created, received, data, raw, meta)
            set_offset(record, first + index)
            set_data_json(record, data_text)
            records.append(record)
    except (struct.error, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        # The checksum matched, so this is a writer bug, not a torn write; still a refusal.
        raise TornEntry(f"undecodable payload of entry {first}: {exc}") from exc
    if at != len(payload):
        raise TornEntry(f"payload of entry {first} has {len(payload) - at} stray bytes")
    return records
