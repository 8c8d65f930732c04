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
    SCALED,
    IoName,
    io_key,
    named_value,
)
from fleetgate.protocols.teltonika.model import AvlRecord, GprsMessage, codec_name
from fleetgate.records import SOURCE_TELTONIKA, Record, new_record

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

_GROUP_SIZES: Final = (1, 2, 4, 8, 0, 16)  # wire sizes of io_groups' six groups; 0 = NX

# A plan says, for one IO layout (group counts + ids in wire order), the string key of
# each element, how many leading elements are integers (the rest are NX/16-byte bytes)
# and which elements get a named value. A tracker sends the same layout over and over,
# so building the data dict is then one dict(zip()) plus the named values. Bounded so
# a hostile device cannot grow it without limit.
_Named = tuple[int, str, int, int, frozenset[int], IoName]
_Plan = tuple[tuple[str, ...], int, tuple[_Named, ...]]
_plans: dict[tuple[tuple[int, ...], tuple[int, ...]], _Plan] = {}
_PLANS_MAX: Final = 2048


def _plan(groups: tuple[int, ...], keys: tuple[int, ...]) -> _Plan:
    plan = _plans.get((groups, keys))
    if plan is None:
        if len(_plans) >= _PLANS_MAX:
            _plans.clear()
        sizes = [s for s, n in zip(_GROUP_SIZES, groups, strict=True) for _ in range(n)]
        named: list[_Named] = []
        for index, (key, size) in enumerate(zip(keys, sizes, strict=True)):
            spec = IO_NAMES_BY_KEY.get(io_key(key, size))
            if spec is not None:
                named.append((index, spec.name, spec.mode, spec.divisor, spec.invalid, spec))
        plan = (tuple(map(str, keys)), sum(groups[:4]), tuple(named))
        _plans[(groups, keys)] = plan
    return plan


def avl_record_data(rec: AvlRecord) -> dict[str, Any]:
    """The JSON-safe ``data`` of one AVL record (shape in the module docstring)."""
    io = rec.io
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
        "io": None,
    }
    groups = rec.io_groups
    if groups is None or sum(groups) != len(io):
        # Hand-built record, or a duplicate id collapsed two elements: the wire size of
        # each value is unknown, so nothing is named (a guess could name a wrong value).
        data["io"] = {
            str(key): value if value.__class__ is int else value.hex()  # type: ignore[union-attr]
            for key, value in io.items()
        }
        return data
    skeys, n_int, named = _plan(groups, tuple(io))
    values = tuple(io.values())
    if n_int == len(values):
        raw_io: dict[str, int | str] = dict(zip(skeys, values, strict=True))  # type: ignore[arg-type]
    else:
        raw_io = dict(zip(skeys[:n_int], values[:n_int], strict=True))  # type: ignore[arg-type]
        for index in range(n_int, len(values)):
            raw_io[skeys[index]] = values[index].hex()  # type: ignore[union-attr]
    data["io"] = raw_io
    for index, name, mode, divisor, invalid, spec in named:
        value = values[index]
        if mode == RAW:
            data[name] = value
        elif mode == FLAG:
            if value in (0, 1):
                data[name] = value == 1
        elif mode == SCALED:
            if value not in invalid:
                data[name] = value / divisor  # type: ignore[operator]
        else:
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
            new_record(
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
