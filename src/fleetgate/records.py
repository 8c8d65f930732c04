"""The one record shape every protocol produces and every sink consumes.

A :class:`Record` is what fleetgate knows about one message from one device: where it came
from (``source``, ``device_id``, ``topic``), when (``created_at`` on the device,
``received_at`` on the server, both epoch milliseconds), what it said (``data``, JSON-safe)
and the original bytes (``raw``) so sinks can forward a vehicle's own protobuf unchanged.

Records have exactly one JSON form (:func:`record_json`), used by the REST API, the live
stream, the logger, JSON lines and every sink that sends JSON. Sinks that forward a
protocol's *own* bytes (Tesla's protobuf) ask :func:`fleetgate.forms.wire_payload`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

import orjson

SOURCE_TESLA: Final = "tesla"
SOURCE_TELTONIKA: Final = "teltonika"
SOURCE_MQTT: Final = "mqtt"

_NO_META: Final[Mapping[str, str]] = {}


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded message from one device.

    ``meta`` carries protocol metadata that is not part of the decoded data but that sinks
    forward as headers (Tesla: ``txid``, ``device_client_version``, ``socket_id``).
    ``offset`` is the record's position in the pipeline's ledger (0 until the pipeline took
    it); with the node's id it identifies the record for consumers that de-duplicate.
    """

    source: str
    device_id: str
    topic: str
    created_at: int
    received_at: int
    data: Mapping[str, Any]
    raw: bytes = b""
    meta: Mapping[str, str] | None = None
    offset: int = field(default=0, compare=False)
    # Serialised JSON forms, filled on first use: the spool, the store, the logger and
    # several sinks need them, and serialising once per record matters on the hot path.
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _data_json: bytes | None = field(default=None, init=False, repr=False, compare=False)


class _RecordDraft:
    """A Record under construction: the same slots, without the frozen ``__setattr__``.

    :func:`new_record` fills one with plain attribute stores (the interpreter's fastest
    kind) and then makes it a :class:`Record` by assigning ``__class__``, which CPython
    allows between classes of identical slot layout; the object is then frozen like any
    Record. That takes about half the instructions of setting each slot through its
    descriptor (which is what a frozen dataclass's own ``__init__`` does, only slower).
    """

    # Record's own slots, so the two layouts cannot drift apart.
    __slots__ = Record.__slots__


def _fast_record_constructor() -> Callable[..., Record]:
    """Positional Record constructor for hot paths (one call per decoded record).

    The field list is checked so a new field cannot be left unset, and the draft's slots
    against Record's (the ``__class__`` assignment needs the same layout: a mismatch fails
    at import).
    """
    names = tuple(f.name for f in fields(Record))
    expected = ("source", "device_id", "topic", "created_at", "received_at", "data", "raw",
                "meta", "offset", "_json", "_data_json")
    if names != expected:  # pragma: no cover - guards future edits of Record
        raise RuntimeError(f"Record fields changed to {names}; update new_record")
    new = object.__new__

    def make(  # noqa: PLR0917 - positional on purpose: the hot path
        source: str,
        device_id: str,
        topic: str,
        created_at: int,
        received_at: int,
        data: Mapping[str, Any],
        raw: bytes = b"",
        meta: Mapping[str, str] | None = None,
    ) -> Record:
        record: Any = new(_RecordDraft)
        record.source = source
        record.device_id = device_id
        record.topic = topic
        record.created_at = created_at
        record.received_at = received_at
        record.data = data
        record.raw = raw
        record.meta = meta
        record.offset = 0
        record._json = None
        record._data_json = None
        record.__class__ = Record
        record_: Record = record
        return record_

    # CPython allows the assignment between classes of identical slot layout; the probe
    # makes a Record-layout change fail at import, not in a device's session.
    probe = make("s", "d", "t", 1, 2, {})
    if probe.__class__ is not Record or probe != Record("s", "d", "t", 1, 2, {}):
        raise RuntimeError("_RecordDraft's slots differ from Record's")  # pragma: no cover
    return make


new_record: Final = _fast_record_constructor()
_set_offset: Final = Record.__dict__["offset"].__set__
_set_json: Final = Record.__dict__["_json"].__set__
_set_data_json: Final = Record.__dict__["_data_json"].__set__


def set_offset(record: Record, offset: int) -> None:
    """Give ``record`` its ledger offset (records are frozen; the pipeline is the writer)."""
    _set_offset(record, offset)


def set_offsets(records: Sequence[Record], first: int) -> None:
    """Give ``records`` (one frame) the offsets ``first``, ``first + 1``, ..."""
    setter = _set_offset
    for offset, record in enumerate(records, first):
        setter(record, offset)


def now_ms() -> int:
    """Server wall-clock time in epoch milliseconds (the ``received_at`` clock)."""
    return time.time_ns() // 1_000_000


# RFC 3339 can only express years 0001..9999; device clocks can say anything.
_MIN_MS: Final = -62_135_596_800_000
_MAX_MS: Final = 253_402_300_799_999
# The same bounds for callers that refuse times outside them (the API's since/until).
MIN_TIME_MS: Final = _MIN_MS
MAX_TIME_MS: Final = _MAX_MS

# Device ids travel in URL paths, file names, subjects and topics: letters, digits and
# ``._:-``, starting with a letter or digit (so never ``.`` or ``..``), bounded in length.
DEVICE_ID_MAX_LENGTH: Final = 128
_DEVICE_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{DEVICE_ID_MAX_LENGTH - 1}}}")


def valid_device_id(device_id: str) -> bool:
    """True when ``device_id`` is safe everywhere an id is used (see the rule above)."""
    return _DEVICE_ID.fullmatch(device_id) is not None


_TWO_DIGITS: Final = tuple(f"{n:02d}" for n in range(60))
_DAY_S: Final = 86_400


@functools.lru_cache(maxsize=512)
def _day_text(day: int) -> str:
    """Days since the epoch → ``2019-06-10T``."""
    t = time.gmtime(day * _DAY_S)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"


@functools.lru_cache(maxsize=4096)
def rfc3339_seconds_text(seconds: int) -> str:
    """Epoch seconds → ``2019-06-10T10:04:46`` (no fraction, no zone; years 1..9999).

    Cached: records of the same second (most of a stream) share the formatted text. A miss
    (a stream whose every record has its own second) builds it from the day's cached date
    and three table lookups, a third of ``gmtime`` and a six-field format.
    """
    seconds = min(max(seconds, _MIN_MS // 1000), _MAX_MS // 1000)
    day, rest = divmod(seconds, _DAY_S)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    two = _TWO_DIGITS
    return _day_text(day) + two[hours] + ":" + two[minutes] + ":" + two[secs]


_MILLIS_TEXT: Final = tuple(f".{n:03d}Z" for n in range(1000))


def format_rfc3339_ms(ms: int) -> str:
    """Epoch milliseconds → ``2019-06-10T10:04:46.000Z`` (clamped to years 1..9999)."""
    ms = min(max(ms, _MIN_MS), _MAX_MS)
    seconds, millis = divmod(ms, 1000)
    return rfc3339_seconds_text(seconds) + _MILLIS_TEXT[millis]


def parse_rfc3339_ms(text: str) -> int:
    """RFC 3339 / ISO 8601 text (or a bare epoch-ms integer) → epoch milliseconds."""
    from datetime import UTC, datetime, timedelta

    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Integer arithmetic: float seconds would lose the last millisecond.
    return (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def record_dict(record: Record) -> dict[str, Any]:
    """The record's JSON form as a dict (before serialisation)."""
    return {
        "source": record.source,
        "device_id": record.device_id,
        "topic": record.topic,
        "created_at": format_rfc3339_ms(record.created_at),
        "received_at": format_rfc3339_ms(record.received_at),
        "data": record.data,
    }


def data_json(record: Record) -> bytes:
    """``record.data`` serialised (cached on the record: the spool writes it, the store and
    the JSON form reuse it)."""
    cached = record._data_json
    if cached is None:
        # orjson's bytes keep its whole output buffer (4 KiB and up, however short the
        # JSON); copied to its exact size, since the spool's memory tail holds 20k records.
        cached = bytes(memoryview(orjson.dumps(record.data)))
        _set_data_json(record, cached)
    return cached


def data_jsons(records: Sequence[Record]) -> list[bytes]:
    """:func:`data_json` of each of ``records`` (one frame), the same bytes, cached alike.

    When none is cached yet, the frame's ``data`` are serialised in one orjson call and cut
    apart: each orjson call costs a fresh output buffer of 8 KiB (which is why data_json
    copies its result), more than the cutting. A list of dicts ``[{..},{..}]`` has ``},{``
    at every boundary between elements; when it occurs exactly ``count - 1`` times, no
    element contains it (in a nested list or in a string) and every piece is one element.
    Otherwise (or on any error, which data_json then raises for the record it concerns)
    each is serialised on its own.
    """
    count = len(records)
    if count > 1 and all(
        record._data_json is None and record.data.__class__ is dict for record in records
    ):
        try:
            joined = orjson.dumps([record.data for record in records])
        except (TypeError, orjson.JSONEncodeError):
            joined = b""
        if joined:  # ``[{`` ... ``}]``: every element is a dict
            pieces = joined[2:-2].split(b"},{")
            if len(pieces) == count:
                texts = [b"{%b}" % piece for piece in pieces]
                for record, text in zip(records, texts, strict=True):
                    _set_data_json(record, text)
                return texts
    return [data_json(record) for record in records]


def set_data_json(record: Record, text: bytes) -> None:
    """Give ``record`` its serialised ``data`` (read back from the spool, already JSON)."""
    _set_data_json(record, text)


# The record JSON is built from pieces whose bytes are exactly what orjson gives for
# record_dict(record): times are ASCII digits and ``-:T.Z`` (never escaped), the head is
# orjson's own output, ``data`` is data_json. Building it costs about half of serialising
# the dict (two times formatted per second, a five-key dict, three concatenations), and it
# leaves no short-lived orjson buffer per record.
_TWO_DIGITS_BYTES: Final = tuple(text.encode() for text in _TWO_DIGITS)
# The milliseconds of each time with the JSON text that follows it, one lookup each.
_MILLIS_THEN_RECEIVED: Final = tuple(
    text.encode() + b'","received_at":"' for text in _MILLIS_TEXT
)
_MILLIS_THEN_DATA: Final = tuple(text.encode() + b'","data":' for text in _MILLIS_TEXT)
_MINUTE_MS: Final = 60_000
# Bounded caches, emptied when full: a stream's records share few minutes and few
# (source, device, topic) heads, and a miss costs about what the uncached form did.
_MINUTES_MAX: Final = 1024
_HEADS_MAX: Final = 4096
_minute_texts: dict[int, bytes] = {}
_json_heads: dict[tuple[str, str, str], bytes] = {}
# The minute of the last created_at / received_at looked up: (its first millisecond, its
# text). A stream's records mostly fall in the minute of the record before, and then the
# time's text is one subtraction and two small-integer operations away: dividing the
# 41-bit epoch value and the dict lookup cost more than the rest of the JSON. One tuple,
# replaced whole, so a reader on another thread never sees a start with another's text.
# The initial start matches no time (every difference from it is negative).
_NO_WINDOW: Final = (_MAX_MS + 1, b"")
_windows: list[tuple[int, bytes]] = [_NO_WINDOW, _NO_WINDOW]  # created_at's, received_at's
_CREATED: Final = 0
_RECEIVED: Final = 1


def _minute_text(minute: int) -> bytes:
    """Minutes since the epoch (within years 1..9999) → ``b"2019-06-10T10:04:"``."""
    day, rest = divmod(minute, 1440)
    hours, minutes = divmod(rest, 60)
    text = (_day_text(day) + _TWO_DIGITS[hours] + ":" + _TWO_DIGITS[minutes] + ":").encode()
    if len(_minute_texts) >= _MINUTES_MAX:
        _minute_texts.clear()
    _minute_texts[minute] = text
    return text


def _moved_window(field: int, ms: int) -> tuple[bytes, int, int]:
    """The text of the minute of ``ms`` (clamped to years 1..9999), its milliseconds into
    that minute and the minute's first millisecond; ``field``'s window moves there."""
    clamped = min(max(ms, _MIN_MS), _MAX_MS)
    minute = clamped // _MINUTE_MS
    start = minute * _MINUTE_MS
    text = _minute_texts.get(minute) or _minute_text(minute)
    _windows[field] = (start, text)
    return text, clamped - start, start


def _json_head(key: tuple[str, str, str]) -> bytes:
    """``{"source":…,"device_id":…,"topic":…,"created_at":"`` as orjson writes them."""
    source, device_id, topic = key
    head = orjson.dumps({"source": source, "device_id": device_id, "topic": topic})
    text = head[:-1] + b',"created_at":"'
    # Only exact strings are cached: 1 == True == 1.0 would share a key but not a form.
    if type(source) is str and type(device_id) is str and type(topic) is str:
        if len(_json_heads) >= _HEADS_MAX:
            _json_heads.clear()
        _json_heads[key] = text
    return text


def record_json(record: Record) -> bytes:
    """The record's one JSON form, serialised (cached on the record).

    Byte for byte ``orjson.dumps(record_dict(record))``, built from cached pieces by
    :func:`record_jsons` (a batch's callers use that directly).
    """
    cached = record._json
    if cached is not None:
        return cached
    return record_jsons((record,))[0]


def record_jsons(records: Sequence[Record]) -> list[bytes]:
    """:func:`record_json` of each of ``records`` (a sink's batch), the same bytes, cached
    alike, in one loop.

    Per record, :func:`record_json` is two calls (with ``wire_payload``'s, three), a key
    tuple and its dict lookup, and the windows read from the module: here those are paid
    once per batch, or once per run of records sharing their source, device and topic (a
    frame's records share the same string objects, compared by identity), and the loop
    keeps only the time arithmetic, the join and the cache store.
    """
    if records and records[0]._data_json is None:
        data_jsons(records)  # one orjson call for a frame's data (what the spool does)
    texts: list[bytes] = []
    append = texts.append
    windows = _windows
    created_start, created_minute = windows[_CREATED]
    received_start, received_minute = windows[_RECEIVED]
    two = _TWO_DIGITS_BYTES
    then_received = _MILLIS_THEN_RECEIVED
    then_data = _MILLIS_THEN_DATA
    join = b"".join
    set_json = _set_json
    source = device = topic = None
    head = b""
    for record in records:
        cached = record._json
        if cached is not None:
            append(cached)
            continue
        created_rest = record.created_at - created_start
        if not 0 <= created_rest < _MINUTE_MS:
            created_minute, created_rest, created_start = _moved_window(
                _CREATED, record.created_at
            )
        received_rest = record.received_at - received_start
        if not 0 <= received_rest < _MINUTE_MS:
            received_minute, received_rest, received_start = _moved_window(
                _RECEIVED, record.received_at
            )
        if (
            record.device_id is not device
            or record.topic is not topic
            or record.source is not source
        ):
            source, device, topic = key = (record.source, record.device_id, record.topic)
            head = _json_heads.get(key) or _json_head(key)
        data = record._data_json
        if data is None:
            data = data_json(record)
        cached = join(
            (
                head,
                created_minute,
                two[created_rest // 1000],
                then_received[created_rest % 1000],
                received_minute,
                two[received_rest // 1000],
                then_data[received_rest % 1000],
                data,
                b"}",
            )
        )
        set_json(record, cached)
        append(cached)
    return texts


def record_metadata(record: Record) -> dict[str, str]:
    """The seven metadata keys Tesla's dispatchers send as headers/attributes.

    Tesla never fills ``timestamp`` or ``version`` (always ``"0"``); fleetgate keeps that
    so consumers written for the reference see identical headers. Records of other sources
    get the same keys, with ``vin`` holding their device id and ``txtype`` their topic.
    """
    meta = record.meta or _NO_META
    return {
        "vin": record.device_id,
        "receivedat": str(record.received_at),
        "timestamp": "0",
        "txid": meta.get("txid", ""),
        "txtype": record.topic,
        "version": "0",
        "device_client_version": meta.get("device_client_version", ""),
    }
