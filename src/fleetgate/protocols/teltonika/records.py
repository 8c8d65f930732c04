"""Teltonika frames → fleetgate :class:`~fleetgate.records.Record` objects (spec section 14).

One AVL record becomes one Record: ``device_id`` = IMEI, ``created_at`` = the record's own
timestamp, topic ``position`` (or ``event`` when an IO change triggered it, i.e. the event
IO id is non-zero) and ``raw`` = the whole frame it came from (records of one frame share
it; the ack is per frame). GPRS messages (codecs 12–15) become ``command_response`` records.

Shape of an AVL record's ``data``::

    latitude, longitude   degrees (float)         valid         satellites != 0
    altitude              metres                  priority      0 low, 1 high, 2 panic
    angle                 degrees from north      event_io_id   0 = periodic record
    satellites, speed     count, km/h             generation_type  codec 16 only, else null
    io                    {"<id>": int | "<hex>"} every element exactly as received
    <name>                named values (io_names): booleans for 0/1 flags, floats for
                          scaled values, lists for beacon/sensor lists

``generation_type`` is always present (null for codecs 8 and 8E) so every AVL record has
the same base keys. This runs once per record on the ingest path: no per-call tables.
"""

from __future__ import annotations

from typing import Any, Final

from fleetgate.protocols.teltonika.events import AvlFrame, GprsFrame
from fleetgate.protocols.teltonika.io_names import (
    CUSTOM,
    FLAG,
    IO_NAMES,
    IO_NAMES_BY_KEY,
    LIST_NAMES,
    RAW,
    named_value,
)
from fleetgate.protocols.teltonika.model import AvlRecord, GprsMessage, codec_name
from fleetgate.records import SOURCE_TELTONIKA, Record

TOPIC_POSITION: Final = "position"
TOPIC_EVENT: Final = "event"
TOPIC_COMMAND_RESPONSE: Final = "command_response"

BASE_KEYS: Final = frozenset(
    {
        "latitude", "longitude", "altitude", "angle", "satellites", "speed", "priority",
        "event_io_id", "generation_type", "valid", "io",
    }
)
if any(n.name in BASE_KEYS for n in IO_NAMES):  # pragma: no cover - table typo guard
    raise RuntimeError("an IO name collides with a base key of Teltonika record data")

# (name, mode, spec) per io_key, so the common modes are handled inline below.
_NAMED: Final = {key: (spec.name, spec.mode, spec) for key, spec in IO_NAMES_BY_KEY.items()}
_GROUP_SIZES: Final = (1, 2, 4, 8, 0, 16)  # wire sizes of io_groups' six groups; 0 = NX

# io_groups tuple -> wire size of each element in order. A device sends the same layout
# again and again, so this is nearly always a hit; bounded against hostile variety.
_sizes_cache: dict[tuple[int, ...], tuple[int, ...]] = {}
_SIZES_CACHE_MAX: Final = 4096


def _element_sizes(groups: tuple[int, ...]) -> tuple[int, ...]:
    sizes = _sizes_cache.get(groups)
    if sizes is None:
        if len(_sizes_cache) >= _SIZES_CACHE_MAX:
            _sizes_cache.clear()
        sizes = tuple(s for s, n in zip(_GROUP_SIZES, groups, strict=True) for _ in range(n))
        _sizes_cache[groups] = sizes
    return sizes


def avl_record_data(rec: AvlRecord) -> dict[str, Any]:
    """The JSON-safe ``data`` of one AVL record (shape in the module docstring)."""
    raw_io: dict[str, int | str] = {}
    data: dict[str, Any] = {
        "latitude": rec.latitude,
        "longitude": rec.longitude,
        "altitude": rec.altitude,
        "angle": rec.angle,
        "satellites": rec.satellites,
        "speed": rec.speed,
        "priority": rec.priority,
        "event_io_id": rec.event_io_id,
        "generation_type": rec.generation_type,
        "valid": rec.satellites != 0,
        "io": raw_io,
    }
    io = rec.io
    groups = rec.io_groups
    if groups is None or sum(groups) != len(io):
        # Hand-built record, or a duplicate id collapsed two elements: the wire size of
        # each value is unknown, so nothing is named (a guess could name a wrong value).
        for key, value in io.items():
            raw_io[str(key)] = value if value.__class__ is int else value.hex()  # type: ignore[union-attr]
        return data
    named = _NAMED
    for (key, value), size in zip(io.items(), _element_sizes(groups), strict=True):
        if value.__class__ is int:
            raw_io[str(key)] = value  # type: ignore[assignment]
        else:
            raw_io[str(key)] = value.hex()  # type: ignore[union-attr]
        entry = named.get((key << 5) | size)
        if entry is None:
            continue
        name, mode, spec = entry
        if mode == RAW and not spec.invalid:
            data[name] = value
            continue
        if mode == FLAG:
            if value in (0, 1):
                data[name] = value == 1
            continue
        converted = named_value(spec, value)
        if converted is None:
            continue
        if mode == CUSTOM and name in LIST_NAMES and isinstance(data.get(name), list):
            data[name].extend(converted)
        else:
            data[name] = converted
    return data


def _printable(payload: bytes) -> str | None:
    """Payload as text when it is printable ASCII (CR, LF, TAB allowed), else None."""
    if not payload.isascii():
        return None
    text = payload.decode("ascii")
    if text.strip("\r\n\t").isprintable():
        return text
    return None


def gprs_message_data(message: GprsMessage) -> dict[str, Any]:
    """``data`` of a codec 12–15 message: codec, type, text or hex, timestamp, imei."""
    data: dict[str, Any] = {
        "codec": codec_name(message.codec),
        "type": message.type,
    }
    text = _printable(message.payload)
    if text is not None:
        data["text"] = text
    else:
        data["hex"] = message.payload.hex()
    data["timestamp"] = message.timestamp_s
    data["imei"] = message.imei
    return data


def to_records(imei: str, frame: AvlFrame | GprsFrame, received_at: int) -> list[Record]:
    """Records for one decoded frame from device ``imei`` received at ``received_at`` (ms)."""
    raw = frame.raw
    if isinstance(frame, AvlFrame):
        return [
            Record(
                SOURCE_TELTONIKA,
                imei,
                TOPIC_EVENT if rec.event_io_id else TOPIC_POSITION,
                rec.timestamp_ms,
                received_at,
                avl_record_data(rec),
                raw,
            )
            for rec in frame.records
        ]
    return [
        Record(
            SOURCE_TELTONIKA,
            imei,
            TOPIC_COMMAND_RESPONSE,
            message.timestamp_s * 1000 if message.timestamp_s is not None else received_at,
            received_at,
            gprs_message_data(message),
            raw,
        )
        for message in frame.messages
    ]
