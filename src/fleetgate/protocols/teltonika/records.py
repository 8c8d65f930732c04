"""Teltonika frames → fleetgate :class:`~fleetgate.records.Record` objects (spec section 14).

One AVL record (any codec: 7, 8, 8E, 16) becomes one Record with topic ``position``:
``device_id`` = IMEI, ``created_at`` = the record's own timestamp, ``raw`` = the whole
frame it came from (records of one frame share it; the ack is per frame). Whether an IO
change triggered the record is in ``data`` (``event_io_id``, ``event_triggered``), not in
the topic, so one tracker's stream stays on one topic, in order. GPRS messages (codecs
12–15) become ``command_response`` records.

Shape of an AVL record's ``data``::

    latitude, longitude   degrees (float)         valid         fix usable: satellites != 0
    altitude              metres                                and coordinates in range
    angle                 degrees from north      priority      0 low, 1 high, 2 panic
    satellites, speed     count, km/h             event_io_id   IO that triggered it, 0 = none
    event_triggered       event_io_id != 0        generation_type  codec 16 only, else null
    io                    {"<id>": int | "<hex>"} every element exactly as received
    <name>                named values from the device family's IO table (io_names):
                          booleans for 0/1 flags, floats for scaled values, lists for
                          beacon/sensor lists
    device_time, device_time_valid   only when the device's clock is implausible (below)

Codec 7 (GH3000) records add ``location_present`` (false: the record carried no GPS
element, latitude/longitude are 0 and ``valid`` is false) and, when sent, ``lac``,
``cell_id``, ``signal_quality``, ``operator``; they are named with the GH table.

Device time: a record time before 2000-01-01 or more than 25 h after ``received_at`` is a
clock that was not set (or garbage), never a fact: ``created_at`` becomes ``received_at``
and ``data`` keeps the device's value as ``device_time`` (RFC 3339) with
``device_time_valid: false``. Times that no sink could store (past year 9999) never get
here: the decoders refuse those frames.

``generation_type`` is always present (null for codecs 7, 8 and 8E) so every AVL record has
the same base keys. This runs once per record on the ingest path: no per-call tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fleetgate.protocols.teltonika.events import AvlFrame, GprsFrame
from fleetgate.protocols.teltonika.gprs import (
    TYPE_CAMERA,
    TYPE_COMMAND,
    TYPE_NACK,
    TYPE_RESPONSE,
)
from fleetgate.protocols.teltonika.io_names import (
    DEFAULT_IO_TABLE,
    FLAG,
    GH_TABLE,
    IO_TABLES,
    LIST_NAMES,
    RAW,
    SCALED,
    SIGNED,
    SIGNED_SCALED,
    IoName,
    IoTable,
    io_key,
    named_value,
)
from fleetgate.protocols.teltonika.layouts import FramePlan, RecordLayout
from fleetgate.protocols.teltonika.model import (
    CODEC_13,
    CODEC_15,
    CODEC_16,
    AvlRecord,
    Gh3000Record,
    GprsMessage,
    codec_name,
)
from fleetgate.records import SOURCE_TELTONIKA, Record, format_rfc3339_ms, new_record

TOPIC_POSITION: Final = "position"
TOPIC_COMMAND_RESPONSE: Final = "command_response"

# Plausible device times (module docstring).
DEVICE_TIME_FROM_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
DEVICE_TIME_AHEAD_MS: Final = 25 * 3600 * 1000

BASE_KEYS: Final = frozenset(
    {
        "latitude", "longitude", "altitude", "angle", "satellites", "speed", "priority",
        "event_io_id", "event_triggered", "generation_type", "valid", "io",
    }
)
_GH_KEYS: Final = frozenset({"location_present", "lac", "cell_id", "signal_quality", "operator"})
_TIME_KEYS: Final = frozenset({"device_time", "device_time_valid"})
if any(  # pragma: no cover - table typo guard
    n.name in BASE_KEYS | _GH_KEYS | _TIME_KEYS for t in IO_TABLES.values() for n in t.names
):
    raise RuntimeError("an IO name collides with a base key of Teltonika record data")

_GROUP_SIZES: Final = (1, 2, 4, 8, 0, 16)  # wire sizes of io_groups' six groups; 0 = NX

# A plan says, for one IO layout (group counts + ids in wire order), the string key of
# each element, how many leading elements are integers (the rest are NX/16-byte bytes)
# and which elements get a named value. A tracker sends the same layout over and over:
# once a layout has been seen ``_COMPILE_AFTER`` times its plan gets a builder compiled
# for it (:func:`_compile`), which fills ``data`` with two dict displays and a few
# conditionals instead of a loop over every element, about twice as fast. Until then,
# and for layouts of more than ``_COMPILE_MAX_ELEMENTS`` elements, a generic loop does
# the same work, so a device sending ever new layouts costs compile time at most once
# per ``_COMPILE_AFTER`` records. Plans are cached per IO table (a family) and bounded.
_PLANS_MAX: Final = 2048
_COMPILE_AFTER: Final = 8
_COMPILE_MAX_ELEMENTS: Final = 128

_Fill = Callable[[tuple[Any, ...], dict[str, Any]], None]
_PLAIN_MODES: Final = frozenset({RAW, SCALED, SIGNED, SIGNED_SCALED})  # always named


class _Plan:
    __slots__ = ("fill", "hits", "n_int", "named", "plain", "skeys")

    def __init__(self, table: IoTable, groups: tuple[int, ...], keys: tuple[int, ...]) -> None:
        sizes = [s for s, n in zip(_GROUP_SIZES, groups, strict=True) for _ in range(n)]
        plain: list[tuple[int, str, IoName]] = []
        rest: list[tuple[int, str, IoName]] = []
        seen: set[str] = set()
        for index, (key, size) in enumerate(zip(keys, sizes, strict=True)):
            spec = table.by_key.get(io_key(key, size))
            if spec is None:
                continue
            name = spec.name
            simple = spec.mode in _PLAIN_MODES and not spec.invalid and name not in LIST_NAMES
            (plain if simple and name not in seen else rest).append((index, name, spec))
            seen.add(name)
        self.skeys = tuple(map(str, keys))
        self.n_int = sum(groups[:4])
        # Values that are always named come first, then the conditional ones, each in
        # wire order: the order a compiled builder sets them in, so the keys of ``data``
        # come out in the same order whichever path built it.
        self.plain = len(plain)
        self.named = tuple(plain + rest)
        self.hits = 0
        self.fill: _Fill | None = None

    def fill_generic(self, values: tuple[Any, ...], data: dict[str, Any]) -> None:
        """What a compiled builder does, as a loop (cold or very large layouts)."""
        skeys, n_int = self.skeys, self.n_int
        raw_io: dict[str, Any] = dict(zip(skeys[:n_int], values[:n_int], strict=True))
        for index in range(n_int, len(values)):
            raw_io[skeys[index]] = values[index].hex()
        data["io"] = raw_io
        for index, name, spec in self.named:
            _merge(data, name, named_value(spec, values[index]))


def _merge(data: dict[str, Any], name: str, value: Any) -> None:
    """Set a named value; lists collected from several ids (two sensor lists) extend."""
    if value is None:
        return
    if name in LIST_NAMES and isinstance(data.get(name), list):
        data[name].extend(value)
    else:
        data[name] = value


def _compile(plan: _Plan) -> _Fill:
    """A builder for one layout: ``fill(values, data)`` == ``plan.fill_generic``.

    The source holds only integers and ``repr`` of strings from the IO table and of the
    decimal ids, so nothing a device sends can reach it as code; values are read from
    ``v`` at run time.
    """
    env: dict[str, Any] = {"_merge": _merge, "_named_value": named_value}
    items, plain, statements = _fill_source(plan, 0, env)
    body = [f"data['io'] = {{{', '.join(items)}}}"]
    if plain:
        body.append(f"data.update({{{', '.join(plain)}}})")
    body.extend(statements)
    source = "def fill(v, data):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, "<teltonika IO layout>", "exec"), env)
    fill: _Fill = env["fill"]
    return fill


def _fill_source(
    plan: _Plan, offset: int, env: dict[str, Any], ref: str = "v[{}]"
) -> tuple[list[str], list[str], list[str]]:
    """Source of a layout's ``io`` items, its always-named items and the statements for
    the conditional names; element ``i`` is ``ref.format(offset + i)``. Specs go into
    ``env``."""
    items = [
        f"{skey!r}: {ref.format(offset + i)}" if i < plan.n_int
        else f"{skey!r}: {ref.format(offset + i)}.hex()"
        for i, skey in enumerate(plan.skeys)
    ]
    plain: list[str] = []
    statements: list[str] = []
    for position, (index, name, spec) in enumerate(plan.named):
        mode = spec.mode
        i = offset + index
        v = ref.format(i)
        if position >= plan.plain:
            if mode == FLAG and not spec.invalid and name not in LIST_NAMES:
                statements.append(f"if {v} < 2: data[{name!r}] = {v} == 1")
            else:
                env[f"s{i}"] = spec
                statements.append(f"_merge(data, {name!r}, _named_value(s{i}, {v}))")
        elif mode == RAW:
            plain.append(f"{name!r}: {v}")
        elif mode == SCALED:
            plain.append(f"{name!r}: {v} / {spec.divisor}")
        else:  # SIGNED, SIGNED_SCALED: two's complement of the element's size
            half, full = 1 << (spec.size * 8 - 1), 1 << (spec.size * 8)
            value = f"({v} - {full} if {v} >= {half} else {v})"
            plain.append(
                f"{name!r}: {value}" if mode == SIGNED else f"{name!r}: {value} / {spec.divisor}"
            )
    return items, plain, statements


# A row (:mod:`.layouts`) → its Record: what ``to_records`` does for one AvlRecord, for
# one layout and IO table, with the AvlRecord and the intermediate ``io`` dict skipped.
_BuildRow = Callable[[tuple[Any, ...], str, int, bytes, int], Record]
# A learned frame's values (:mod:`.layouts`) → all its Records, the rows' builders in one.
_BuildFrame = Callable[[tuple[Any, ...], str, int, bytes, int], list[Record]]
# A frame plan gets its own builder only up to this many values (one local each).
_COMPILE_MAX_FRAME_VALUES: Final = 2048
_NEW_RECORD: Final = (
    f"_new_record({SOURCE_TELTONIKA!r}, imei, {TOPIC_POSITION!r}, created, received_at, "
    "data, raw)"
)


def _builder_env() -> dict[str, Any]:
    """The globals of compiled builders (what their source calls)."""
    return {
        "_merge": _merge, "_named_value": named_value, "_implausible": _implausible,
        "_new_record": new_record,
    }


def _record_lines(
    layout: RecordLayout, table: IoTable, env: dict[str, Any], first: int
) -> list[str]:
    """Source lines that set ``data`` and ``created`` of the Record ``to_records`` makes of
    ``layout.record(values)``, key for key in the same order, where value ``i`` of the row
    is the local ``e{first + i}`` (see :func:`_compile` for why the source is safe)."""
    plan = _Plan(table, layout.groups, layout.keys)
    items, plain, statements = _fill_source(plan, first + layout.io_start, env, "e{}")
    e = [f"e{first + i}" for i in range(layout.io_start)]
    generation = e[9] if layout.codec == CODEC_16 else "None"
    base = [
        "'latitude': lat", "'longitude': lon", f"'altitude': {e[4]}", f"'angle': {e[5]}",
        f"'satellites': {e[6]}", f"'speed': {e[7]}", f"'priority': {e[1]}",
        f"'event_io_id': {e[8]}", f"'event_triggered': {e[8]} != 0",
        f"'generation_type': {generation}",
        f"'valid': {e[6]} != 0 and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0",
        f"'io': {{{', '.join(items)}}}",
    ]
    return [
        f"lat = {e[3]} / 10_000_000",
        f"lon = {e[2]} / 10_000_000",
        f"data = {{{', '.join(base + plain)}}}",
        *statements,
        f"created = {e[0]}",
        f"if not {DEVICE_TIME_FROM_MS} <= created <= latest:",
        "    _implausible(data, created)",
        "    created = received_at",
    ]


def _compiled(name: str, body: list[str], env: dict[str, Any], filename: str) -> Any:
    """The function ``name(v, imei, received_at, raw, latest)`` of ``body``'s lines."""
    source = f"def {name}(v, imei, received_at, raw, latest):\n" + "".join(
        f"    {line}\n" for line in body
    )
    exec(compile(source, filename, "exec"), env)
    return env[name]


def _unpacked(count: int) -> str:
    """The values unpacked into locals e0, e1, ... first: a local is read in one step, an
    indexed element in three."""
    return f"{', '.join(f'e{i}' for i in range(count))}, = v"


def _compile_row(layout: RecordLayout, table: IoTable) -> _BuildRow:
    """``build(values, imei, received_at, raw, latest)``: the Record ``to_records`` makes
    of ``layout.record(values)``."""
    env = _builder_env()
    body = [
        _unpacked(layout.io_start + len(layout.keys)),
        *_record_lines(layout, table, env, 0),
        f"return {_NEW_RECORD}",
    ]
    build: _BuildRow = _compiled("build", body, env, "<teltonika AVL row>")
    return build


def _compile_frame(plan: FramePlan, table: IoTable) -> _BuildFrame:
    """``build(values, imei, received_at, raw, latest)``: the Records ``to_records`` makes
    of ``plan.rows(values)``, the row builders' statements one after the other, without a
    row (a tuple slice) and a call per record."""
    env = _builder_env()
    body = [_unpacked(plan.bounds[-1][2])]
    for index, (layout, low, _) in enumerate(plan.bounds):
        body.extend(_record_lines(layout, table, env, low))
        body.append(f"r{index} = {_NEW_RECORD}")
    body.append(f"return [{', '.join(f'r{i}' for i in range(len(plan.bounds)))}]")
    build: _BuildFrame = _compiled("build", body, env, "<teltonika AVL frame>")
    return build


def _row_builder(layout: RecordLayout, table: IoTable) -> _BuildRow | None:
    """The compiled builder of ``layout`` for ``table``, once the layout has been seen
    ``_COMPILE_AFTER`` times (None before: the caller takes the general path)."""
    layout.hits += 1
    if layout.hits < _COMPILE_AFTER or len(layout.keys) > _COMPILE_MAX_ELEMENTS:
        return None
    build = layout.builders[table] = _compile_row(layout, table)
    return build


def _frame_builder(plan: FramePlan, table: IoTable) -> _BuildFrame | None:
    """The compiled builder of ``plan``'s frames for ``table``, once the plan has been read
    ``_COMPILE_AFTER`` times and each of its layouts would get a row builder (None
    before, or for a plan too large: the caller builds row by row)."""
    plan.hits += 1
    if (
        plan.hits < _COMPILE_AFTER
        or plan.bounds[-1][2] > _COMPILE_MAX_FRAME_VALUES
        or any(len(layout.keys) > _COMPILE_MAX_ELEMENTS for layout, _, _ in plan.bounds)
    ):
        return None
    build = plan.builders[table] = _compile_frame(plan, table)
    return build


def _plan(table: IoTable, groups: tuple[int, ...], keys: tuple[int, ...]) -> _Plan:
    plans: dict[tuple[tuple[int, ...], tuple[int, ...]], _Plan] = table.plans
    plan = plans.get((groups, keys))
    if plan is None:
        if len(plans) >= _PLANS_MAX:
            plans.clear()
        plan = plans[(groups, keys)] = _Plan(table, groups, keys)
    return plan


def avl_record_data(rec: AvlRecord, table: IoTable | None = None) -> dict[str, Any]:
    """The JSON-safe ``data`` of one AVL record (shape in the module docstring).

    ``table`` names the IO elements (default: the common FMB table; codec 7 records
    always use the GH table, the only family that sends them).
    """
    io = rec.io
    lat = rec.latitude
    lon = rec.longitude
    event = rec.event_io_id
    data: dict[str, Any] = {
        "latitude": lat,
        "longitude": lon,
        "altitude": rec.altitude,
        "angle": rec.angle,
        "satellites": rec.satellites,
        "speed": rec.speed,
        "priority": rec.priority,
        "event_io_id": event,
        "event_triggered": event != 0,
        "generation_type": rec.generation_type,
        "valid": rec.satellites != 0 and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0,
        "io": None,
    }
    if rec.__class__ is Gh3000Record:
        table = GH_TABLE
        _add_gh3000(data, rec)  # type: ignore[arg-type]
    elif table is None:
        table = DEFAULT_IO_TABLE
    groups = rec.io_groups
    if groups is None or sum(groups) != len(io):
        # Hand-built record, or a duplicate id collapsed two elements: the wire size of
        # each value is unknown, so nothing is named (a guess could name a wrong value).
        data["io"] = {
            str(key): value if value.__class__ is int else value.hex()  # type: ignore[union-attr]
            for key, value in io.items()
        }
        return data
    plan = _plan(table, groups, tuple(io))
    values = tuple(io.values())
    fill = plan.fill
    if fill is not None:
        fill(values, data)
        return data
    plan.hits += 1
    if plan.hits >= _COMPILE_AFTER and len(values) <= _COMPILE_MAX_ELEMENTS:
        plan.fill = _compile(plan)
    plan.fill_generic(values, data)
    return data


def _add_gh3000(data: dict[str, Any], rec: Gh3000Record) -> None:
    present = rec.location_present
    data["location_present"] = present
    if not present:
        data["valid"] = False
    for key, value in (
        ("lac", rec.lac), ("cell_id", rec.cell_id), ("signal_quality", rec.signal_quality),
        ("operator", rec.operator),
    ):
        if value is not None:
            data[key] = value


def _printable(payload: bytes) -> str | None:
    """Payload as text when it is printable ASCII (CR, LF, TAB allowed), else None."""
    if not payload.isascii():
        return None
    text = payload.decode("ascii")
    if text.strip("\r\n\t").isprintable():
        return text
    return None


def _kind(message: GprsMessage) -> str:
    if message.codec in (CODEC_13, CODEC_15):
        return "message"
    return _KINDS.get(message.type, "other")


_KINDS: Final = {
    TYPE_COMMAND: "command", TYPE_RESPONSE: "response", TYPE_NACK: "nack",
    TYPE_CAMERA: "camera",
}


def camera_data(payload: bytes) -> dict[str, Any]:
    """What a codec 12 camera message (type 0x0d, spec 7.5) says, as far as it parses.

    Sub-type 1 announces a photo (id, size), sub-type 2 carries one chunk of it (id,
    offset, length); the photo bytes themselves stay in the message's ``hex``. A payload
    that does not parse still yields ``subtype`` (None when empty): camera frames are
    recognised and kept, never refused.
    """
    if not payload:
        return {"subtype": None}
    subtype = payload[0]
    out: dict[str, Any] = {"subtype": subtype}
    if subtype == 1 and len(payload) == 9:
        out["event"] = "photo_announcement"
        out["photo_id"] = int.from_bytes(payload[1:5], "big")
        out["photo_size"] = int.from_bytes(payload[5:9], "big")
    elif subtype == 2 and len(payload) >= 11:
        length = int.from_bytes(payload[9:11], "big")
        if len(payload) == 11 + length:
            out["event"] = "photo_chunk"
            out["photo_id"] = int.from_bytes(payload[1:5], "big")
            out["offset"] = int.from_bytes(payload[5:9], "big")
            out["chunk_length"] = length
    return out


def gprs_message_data(message: GprsMessage) -> dict[str, Any]:
    """``data`` of a codec 12–15 message: codec, type, kind, text or hex, imei.

    ``kind`` is ``command`` / ``response`` / ``nack`` / ``camera`` / ``other`` for codecs
    12 and 14 (by type) and ``message`` for the one-way codecs 13 and 15. Camera messages
    add ``camera`` (:func:`camera_data`). The message time is the record's
    ``created_at`` (see the module docstring for implausible clocks).
    """
    kind = _kind(message)
    data: dict[str, Any] = {
        "codec": codec_name(message.codec),
        "type": message.type,
        "kind": kind,
    }
    text = _printable(message.payload)
    if text is not None:
        data["text"] = text
    else:
        data["hex"] = message.payload.hex()
    data["imei"] = message.imei
    if kind == "camera":
        data["camera"] = camera_data(message.payload)
    return data


def to_records(
    imei: str,
    frame: AvlFrame | GprsFrame,
    received_at: int,
    io_table: IoTable | None = None,
) -> list[Record]:
    """Records for one decoded frame from device ``imei`` received at ``received_at`` (ms).

    ``io_table`` names IO elements for the device's family (:func:`~.io_names.io_table`);
    the default is the common FMB table.
    """
    raw = frame.raw
    latest = received_at + DEVICE_TIME_AHEAD_MS
    out: list[Record] = []
    append = out.append
    if isinstance(frame, AvlFrame):
        table = io_table if io_table is not None else DEFAULT_IO_TABLE
        learned = frame.learned
        if learned is not None:
            plan, flat = learned
            build_frame = plan.builders.get(table)
            if build_frame is None:
                build_frame = _frame_builder(plan, table)
            if build_frame is not None:
                return build_frame(flat, imei, received_at, raw, latest)
        rows = frame.rows
        if rows is not None:
            for layout, values in rows:
                build = layout.builders.get(table)
                if build is None:
                    build = _row_builder(layout, table)
                    if build is None:
                        append(_avl_record(imei, layout.record(values), table, received_at,
                                           raw, latest))
                        continue
                append(build(values, imei, received_at, raw, latest))
            return out
        for rec in frame.records:
            append(_avl_record(imei, rec, io_table, received_at, raw, latest))
        return out
    for message in frame.messages:
        data = gprs_message_data(message)
        created = received_at
        stamp = message.timestamp_ms
        if stamp is not None:
            if DEVICE_TIME_FROM_MS <= stamp <= latest:
                created = stamp
            else:
                _implausible(data, stamp)
        append(
            new_record(
                SOURCE_TELTONIKA, imei, TOPIC_COMMAND_RESPONSE, created, received_at, data, raw
            )
        )
    return out


def _avl_record(  # noqa: PLR0917 - positional: once per record
    imei: str, rec: AvlRecord, table: IoTable | None, received_at: int, raw: bytes,
    latest: int,
) -> Record:
    data = avl_record_data(rec, table)
    created = rec.timestamp_ms
    if not DEVICE_TIME_FROM_MS <= created <= latest:
        _implausible(data, created)
        created = received_at
    return new_record(SOURCE_TELTONIKA, imei, TOPIC_POSITION, created, received_at, data, raw)


def _implausible(data: dict[str, Any], device_time_ms: int) -> None:
    data["device_time"] = format_rfc3339_ms(device_time_ms)
    data["device_time_valid"] = False
