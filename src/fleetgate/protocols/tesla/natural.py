"""``Record.data`` of Tesla records: the natural JSON every fleetgate sink, the REST API and
the dashboard see.

Shapes by topic:

* ``V``: ``{"<FieldName>": value, ...}`` one key per datum (a repeated key keeps the last
  value). Unknown Field numbers from newer firmware use ``str(number)`` as key. Values:
  strings that spell a number become that number and ``"true"``/``"false"`` become
  booleans (vehicles without ``prefer_typed`` send almost every value as a string:
  ``"VehicleSpeed": "16.0"`` → ``16.0``), except for the free-text fields in
  :data:`TEXT_FIELDS` (``VehicleName``, ``Version``, media titles ...), which stay
  strings whatever they contain; int/long → integer, float → number with float32's
  shortest digits, double → number, bool → bool, ``location_value`` →
  ``{"latitude": …, "longitude": …}``, enum values → their name (``"ShiftStateD"``;
  an unknown number stays a number), ``invalid`` → ``null``, ``door_value`` →
  ``{"DriverFront": bool, …}`` (6 keys),
  ``tire_location_value`` → ``{"front_left": bool, …}`` (10 keys), ``time_value`` →
  ``"HH:MM:SS"``, a datum without a (known) value → ``null``; non-finite numbers → ``null``.
  When the vehicle marks the payload as a resend, ``"is_resend": true`` is added
  (lowercase keys never collide with Field names).
* ``alerts``: ``{"alerts": [{"name": str, "audiences": [str], "started_at": RFC3339|null,
  "ended_at": RFC3339|null}]}`` (timestamps after the ms→s fix, millisecond precision).
* ``errors``: ``{"errors": [{"name": str, "body": str, "tags": {str: str},
  "created_at": RFC3339|null}]}``.
* ``connectivity``: ``{"connection_id": str, "status": "CONNECTED"|"DISCONNECTED"|…,
  "network_interface": str}``.
* any other topic (e.g. ``metrics``): ``{}`` — the bytes are forwarded untouched in ``raw``.

The VIN is the record's ``device_id`` and the payload time its ``created_at``, so neither
is repeated in ``data``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fleetgate.protocols.tesla.gojson import float32_value
from fleetgate.protocols.tesla.proto import (
    vehicle_alert_pb2,
    vehicle_connectivity_pb2,
    vehicle_data_pb2,
    vehicle_error_pb2,
)
from fleetgate.protocols.tesla.transforms import (
    LOCATION_FIELD,
    VehicleDatum,
    parse_location,
    rewrite_scientific,
)
from fleetgate.protocols.tesla.values import (
    FIELD_NAMES,
    VALUE_FIELDS,
    enum_name,
    location_dict,
    time_text,
    ts_ms,
)
from fleetgate.records import format_rfc3339_ms


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _generic_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            name = enum_name(fd, value)
            out[fd.name] = name if name is not None else value
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated:
            out[fd.name] = _generic_message(value) if message.HasField(fd.name) else None
        elif fd.type == FieldDescriptor.TYPE_FLOAT:
            out[fd.name] = _finite(float32_value(value))
        elif fd.type == FieldDescriptor.TYPE_DOUBLE:
            out[fd.name] = _finite(value)
        elif not fd.is_repeated:
            out[fd.name] = value
    return out


def _enum_natural(fd: Any) -> Callable[[int], Any]:
    names = {number: value.name for number, value in fd.enum_type.values_by_number.items()}

    def convert(raw: int) -> Any:
        name = names.get(raw)
        return name if name is not None else int(raw)

    return convert


def _float_natural(raw: float) -> float | None:
    return _finite(float32_value(raw))


def _location_natural(raw: Any) -> dict[str, float | None]:
    return {key: _finite(value) for key, value in location_dict(raw).items()}


def _none(raw: Any) -> None:
    return None


def _natural_converter(fd: Any) -> Callable[[Any], Any] | None:
    """How ``natural_value`` renders oneof member ``fd``; None: the raw value as it is."""
    if fd.name == "invalid":
        return _none
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return _enum_natural(fd)
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return _float_natural
    if fd.type == FieldDescriptor.TYPE_DOUBLE:
        return _finite
    if fd.name == "location_value":
        return _location_natural
    if fd.name == "time_value":
        return time_text
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _generic_message  # Doors, TireLocation: every boolean, proto names
    return None


# Built once from the descriptors, so a datum costs one dict lookup instead of a walk
# through descriptor attributes.
_NATURAL: Final = {name: _natural_converter(fd) for name, fd in VALUE_FIELDS.items()}


# Fields whose string values are free text: never read as numbers ("VehicleName": "2024").
TEXT_FIELDS: Final = frozenset(
    {
        "VehicleName",
        "Version",
        "SoftwareUpdateVersion",
        "RouteLine",
        "DestinationName",
        "MediaNowPlayingArtist",
        "MediaNowPlayingTitle",
        "MediaNowPlayingAlbum",
        "MediaNowPlayingStation",
        "MediaPlaybackSource",
        "MediaPlaybackStatus",
    }
)
_NUMBER_CHARS: Final = frozenset("0123456789+-.eE")
_BOOLEANS: Final = {"true": True, "false": False}


def natural_string(name: str, text: str) -> Any:
    """A string datum as its natural JSON value (see the module docstring)."""
    if name in TEXT_FIELDS or not text:
        return text
    boolean = _BOOLEANS.get(text)
    if boolean is not None:
        return boolean
    if not _NUMBER_CHARS.issuperset(text):
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    digits = text.lstrip("+-")
    if digits.isdigit() and len(digits) < 16:
        return int(text)
    return number


def natural_value(value: vehicle_data_pb2.Value) -> Any:
    """One datum value as plain JSON (see module docstring)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    convert = _NATURAL[which]
    raw = getattr(value, which)
    return raw if convert is None else convert(raw)


def natural_vehicle_data(entries: Iterable[VehicleDatum], is_resend: bool) -> dict[str, Any]:
    """``Record.data`` of a ``V`` payload from its data as (key, set member, Value) tuples.

    :func:`~.transforms.transform_vehicle_data_entries` returns exactly these, so the frame
    path reads each datum from upb once.
    """
    names = FIELD_NAMES
    converters = _NATURAL
    isfinite = math.isfinite
    data: dict[str, Any] = {}
    for key, which, value in entries:
        name = names.get(key)
        if name is None:
            name = str(key)
        if which == "double_value":  # the common case, inlined
            raw = value.double_value
            data[name] = raw if isfinite(raw) else None
        elif which == "string_value":
            data[name] = natural_string(name, value.string_value)
        elif which is None:
            data[name] = None
        else:
            convert = converters[which]
            raw = getattr(value, which)
            data[name] = raw if convert is None else convert(raw)
    if is_resend:
        data["is_resend"] = True
    return data


def transform_vehicle_data_natural(message: vehicle_data_pb2.Payload, vin: str) -> dict[str, Any]:
    """The ``V`` transforms applied in place, and ``Record.data`` of the result, in one pass.

    The same as :func:`~.transforms.transform_vehicle_data_entries` followed by
    :func:`natural_vehicle_data` (a property test holds them equal), without the list of
    entries between them: each datum is read from upb once and its natural value made at
    once, which is most of what a ``V`` frame costs.
    """
    message.vin = vin
    names = FIELD_NAMES
    converters = _NATURAL
    isfinite = math.isfinite
    location_seen = False
    data: dict[str, Any] = {}
    for datum in message.data:
        key = datum.key
        value = datum.value
        which = value.WhichOneof("value")
        name = names.get(key)
        if name is None:
            name = str(key)
        if which == "double_value":  # the common case, first
            raw = value.double_value
            data[name] = raw if isfinite(raw) else None
        elif which == "string_value":
            text = value.string_value
            if not text:
                data[name] = text
            else:
                if key == LOCATION_FIELD and not location_seen:
                    parsed = parse_location(text)
                    if parsed is not None:
                        location = value.location_value
                        location.latitude, location.longitude = parsed
                        data[name] = _location_natural(location)
                        location_seen = True
                        continue
                # Only a text with an exponent can be in scientific notation.
                if "e" in text or "E" in text:
                    rewritten = rewrite_scientific(text)
                    if rewritten is not None:
                        value.string_value = text = rewritten
                data[name] = natural_string(name, text)
        elif which is None:
            data[name] = None
        else:
            convert = converters[which]
            raw = getattr(value, which)
            data[name] = raw if convert is None else convert(raw)
        if key == LOCATION_FIELD:
            # Only the first Location datum is looked at, parsed or not.
            location_seen = True
    if message.is_resend:
        data["is_resend"] = True
    return data


def _ts_text(message: Message, name: str) -> str | None:
    if not message.HasField(name):
        return None
    return format_rfc3339_ms(ts_ms(getattr(message, name)))


def natural_data(topic: str, message: Message | None) -> dict[str, Any]:
    """``Record.data`` for a transformed message (see module docstring for shapes)."""
    if isinstance(message, vehicle_data_pb2.Payload):
        entries = []
        for datum in message.data:
            value = datum.value
            entries.append((datum.key, value.WhichOneof("value"), value))
        return natural_vehicle_data(entries, message.is_resend)
    if isinstance(message, vehicle_alert_pb2.VehicleAlerts):
        audience = vehicle_alert_pb2.VehicleAlert.DESCRIPTOR.fields_by_name["audiences"]
        return {
            "alerts": [
                {
                    "name": alert.name,
                    "audiences": [enum_name(audience, a) or a for a in alert.audiences],
                    "started_at": _ts_text(alert, "started_at"),
                    "ended_at": _ts_text(alert, "ended_at"),
                }
                for alert in message.alerts
            ]
        }
    if isinstance(message, vehicle_error_pb2.VehicleErrors):
        return {
            "errors": [
                {
                    "name": error.name,
                    "body": error.body,
                    "tags": dict(sorted(error.tags.items())),
                    "created_at": _ts_text(error, "created_at"),
                }
                for error in message.errors
            ]
        }
    if isinstance(message, vehicle_connectivity_pb2.VehicleConnectivity):
        status = vehicle_connectivity_pb2.VehicleConnectivity.DESCRIPTOR.fields_by_name["status"]
        return {
            "connection_id": message.connection_id,
            "status": enum_name(status, message.status) or message.status,
            "network_interface": message.network_interface,
        }
    return {}


def payload_created_at_ms(message: Message | None) -> int | None:
    """The payload's own ``created_at`` in epoch ms, when it has one."""
    if message is None or not message.HasField("created_at"):
        return None
    return ts_ms(message.created_at)  # type: ignore[attr-defined]
