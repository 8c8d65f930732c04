"""Per-topic payload transforms: protobuf in, protobuf out (spec §9.3).

The reference server decodes the four topics it knows, fixes them up, and re-serialises:

* ``V`` (``Payload``): ``vin`` := certificate VIN; the first ``Location`` datum holding a
  string like ``(37.412374 S, 122.145867 E)`` becomes a ``location_value`` (S and W negate);
  string values in scientific notation (``1.19e-05``) are re-read as float32 and rewritten with
  exactly five decimals (``0.00001``).
* ``alerts`` (``VehicleAlerts``): ``vin``; alert start/end timestamps whose *seconds* are
  really milliseconds (≥ 315,576,000,000) are converted.
* ``errors`` (``VehicleErrors``) and ``connectivity`` (``VehicleConnectivity``): ``vin``.
* Any other topic: bytes untouched.

Unknown protobuf fields and unknown ``Field`` enum numbers survive re-serialisation (the
upb runtime keeps both), so newer firmware signals pass through unharmed.

After the transforms, every timestamp the payload carries must be a time: ``created_at`` of
the four messages, each alert's ``started_at``/``ended_at`` and each error's ``created_at``
must lie in years 1 to 9999 (protobuf's Timestamp range; nanos 0 to 999,999,999).
``created_at.seconds = 10**17`` is refused with :class:`ImpossibleTimeError`, a
:class:`PayloadError`, like a payload that does not decode: such a value cannot be stored
(epoch ms beyond 64 bits), rendered as RFC 3339, or written by Go's protojson.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from typing import Final

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from fleetgate.protocols.tesla.proto import (
    vehicle_alert_pb2,
    vehicle_connectivity_pb2,
    vehicle_data_pb2,
    vehicle_error_pb2,
)

TOPIC_V: Final = "V"
TOPIC_ALERTS: Final = "alerts"
TOPIC_ERRORS: Final = "errors"
TOPIC_CONNECTIVITY: Final = "connectivity"

# Topic → root message class; topics not listed are forwarded as opaque bytes.
MESSAGE_TYPES: Final[dict[str, Callable[[], Message]]] = {
    TOPIC_V: vehicle_data_pb2.Payload,
    TOPIC_ALERTS: vehicle_alert_pb2.VehicleAlerts,
    TOPIC_ERRORS: vehicle_error_pb2.VehicleErrors,
    TOPIC_CONNECTIVITY: vehicle_connectivity_pb2.VehicleConnectivity,
}

# Seconds beyond the range of a protobuf Duration: such a "seconds" value is really ms.
MAX_SECONDS: Final = 315_576_000_000

LOCATION_FIELD: Final = vehicle_data_pb2.Location
_FIELD_LOCATION: Final = LOCATION_FIELD

# Go's Sscanf("(%f %1s, %f %1s)"): verbs skip leading blanks, a blank in the format matches
# zero or more blanks, other characters must match exactly, trailing input is ignored.
_BLANK = r"[ \t\r]*"
_FLOAT = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_LOCATION_RE: Final = re.compile(
    rf"\({_BLANK}({_FLOAT}){_BLANK}(\S),{_BLANK}({_FLOAT}){_BLANK}(\S)\)"
)
# Reference regex, anchored at both ends (Go's ``$`` does not accept a trailing newline).
_SCIENTIFIC_RE: Final = re.compile(r"[+-]?(?:[0-9]*\.[0-9]+|[0-9]+\.[0-9]*)[eE][+-]?[0-9]+")

_F32 = struct.Struct("<f")


class PayloadError(ValueError):
    """The payload of a known topic is not valid protobuf for that topic."""


class ImpossibleTimeError(PayloadError):
    """The payload decodes, but one of its timestamps is not a time (outside years 1-9999)."""


# protobuf's Timestamp range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
MAX_NANOS: Final = 999_999_999


def parse_location(text: str) -> tuple[float, float] | None:
    """``"(37.412374 S, 122.145867 E)"`` → ``(-37.412374, 122.145867)``; None if not that form."""
    match = _LOCATION_RE.match(text)
    if match is None:
        return None
    lat_s, lat_q, lon_s, lon_q = match.groups()
    if lat_q not in ("N", "S") or lon_q not in ("E", "W"):
        return None
    lat, lon = float(lat_s), float(lon_s)
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    return (-lat if lat_q == "S" else lat, -lon if lon_q == "W" else lon)


def rewrite_scientific(text: str) -> str | None:
    """``"1.19e-05"`` → ``"0.00001"`` (float32, five decimals); None when not rewritten."""
    if _SCIENTIFIC_RE.fullmatch(text) is None:
        return None
    value = float(text)
    if math.isinf(value):
        return None  # Go: ParseFloat(…, 32) reports ErrRange; the string stays as sent
    try:
        (value32,) = _F32.unpack(_F32.pack(value))
    except OverflowError:
        return None
    return f"{value32:.5f}"


# One datum after the transforms: (Field number, the set member of its value oneof, the Value).
VehicleDatum = tuple[int, str | None, vehicle_data_pb2.Value]


def transform_vehicle_data(message: vehicle_data_pb2.Payload, vin: str) -> None:
    """Apply the ``V`` transforms in place."""
    transform_vehicle_data_entries(message, vin)


def transform_vehicle_data_entries(
    message: vehicle_data_pb2.Payload, vin: str
) -> list[VehicleDatum]:
    """Apply the ``V`` transforms in place; return every datum, in order, as it now stands.

    One pass over the data: the only transform that looks beyond its own datum is the
    location one (first ``Location`` datum only), and for that datum it runs before the
    scientific rewrite, as in the reference's two loops. Callers that go on to read the
    data (``natural_data``) reuse the returned tuples instead of asking upb again.
    """
    message.vin = vin
    entries: list[VehicleDatum] = []
    location_seen = False
    for datum in message.data:
        key = datum.key
        value = datum.value
        which = value.WhichOneof("value")
        if which == "string_value":
            text = value.string_value
            if text and key == _FIELD_LOCATION and not location_seen:
                parsed = parse_location(text)
                if parsed is not None:
                    value.location_value.latitude = parsed[0]
                    value.location_value.longitude = parsed[1]
                    which = value.WhichOneof("value")
            if text and which == "string_value":
                rewritten = rewrite_scientific(text)
                if rewritten is not None:
                    value.string_value = rewritten
        if key == _FIELD_LOCATION:
            # Only the first Location datum is looked at, parsed or not.
            location_seen = True
        entries.append((key, which, value))
    return entries


def _fix_millis(ts: Timestamp) -> None:
    if ts.seconds >= MAX_SECONDS:
        millis = ts.seconds
        ts.seconds, rest = divmod(millis, 1000)
        ts.nanos = rest * 1_000_000


def transform_alerts(message: vehicle_alert_pb2.VehicleAlerts, vin: str) -> None:
    """Apply the ``alerts`` transforms in place."""
    message.vin = vin
    for alert in message.alerts:
        if alert.HasField("started_at"):
            _fix_millis(alert.started_at)
        if alert.HasField("ended_at"):
            _fix_millis(alert.ended_at)


def _check_time(ts: Timestamp, where: str) -> None:
    # An unset Timestamp reads as 0/0, a valid time: no HasField needed.
    seconds = ts.seconds
    nanos = ts.nanos
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        raise ImpossibleTimeError(f"{where}.seconds {seconds} is not a time (years 1-9999)")
    if not 0 <= nanos <= MAX_NANOS:
        raise ImpossibleTimeError(f"{where}.nanos {nanos} is not 0-999999999")


def check_times(message: Message) -> None:
    """Raise :class:`ImpossibleTimeError` when a timestamp in ``message`` is not a time.

    Run after the transforms (an alert time in milliseconds is converted first).
    """
    if isinstance(message, vehicle_data_pb2.Payload):
        _check_time(message.created_at, "created_at")
    elif isinstance(message, vehicle_alert_pb2.VehicleAlerts):
        _check_time(message.created_at, "created_at")
        for n, alert in enumerate(message.alerts):
            _check_time(alert.started_at, f"alerts[{n}].started_at")
            _check_time(alert.ended_at, f"alerts[{n}].ended_at")
    elif isinstance(message, vehicle_error_pb2.VehicleErrors):
        _check_time(message.created_at, "created_at")
        for n, error in enumerate(message.errors):
            _check_time(error.created_at, f"errors[{n}].created_at")
    elif isinstance(message, vehicle_connectivity_pb2.VehicleConnectivity):
        _check_time(message.created_at, "created_at")


def decode_payload(topic: str, payload: bytes) -> Message | None:
    """The payload as its topic's message, or None for topics without a decoder."""
    factory = MESSAGE_TYPES.get(topic)
    if factory is None:
        return None
    message = factory()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise PayloadError(f"{topic}: {exc}") from exc
    return message


def transform_message(topic: str, message: Message, vin: str) -> None:
    """Apply the topic's transforms to a decoded message in place."""
    if isinstance(message, vehicle_data_pb2.Payload):
        transform_vehicle_data(message, vin)
    elif isinstance(message, vehicle_alert_pb2.VehicleAlerts):
        transform_alerts(message, vin)
    elif isinstance(
        message, vehicle_error_pb2.VehicleErrors | vehicle_connectivity_pb2.VehicleConnectivity
    ):
        message.vin = vin
    else:  # pragma: no cover - MESSAGE_TYPES and this dispatch are kept in step
        raise TypeError(f"no transform for {type(message).__name__} on topic {topic!r}")


def transform_payload(topic: str, payload: bytes, vin: str) -> tuple[Message | None, bytes]:
    """Decode, transform and re-serialise ``payload``.

    Returns the transformed message (None for unknown topics) and the bytes to forward.
    Raises :class:`PayloadError` when a known topic's payload does not decode, and its
    :class:`ImpossibleTimeError` when a timestamp in it is not a time.
    """
    message = decode_payload(topic, payload)
    if message is None:
        return None, payload
    transform_message(topic, message, vin)
    check_times(message)
    return message, message.SerializeToString()
