"""JSON forms of Tesla records: protojson, fleetgate's ``data`` dict, log lines, MQTT.

Four audiences, four shapes:

1. **protojson** (:func:`protojson_dict`, :func:`protojson_bytes`) — what the reference sends
   to dispatchers when ``transmit_decoded_records`` is on (spec §9.4): lowerCamelCase names,
   every field emitted (``null`` for unset messages, ``[]``/``{}`` for empty repeated/maps),
   enums by name (unknown numbers as numbers), 64-bit integers as strings, Timestamps as
   RFC 3339 with 0/3/6/9 fractional digits, only the set member of a oneof. Unknown topics
   give ``{}``.

2. **fleetgate ``data``** (:func:`natural_data`) — the ``Record.data`` every fleetgate sink,
   the REST API and the dashboard see. Shapes by topic:

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

3. **log form** (:func:`log_form`, spec §11.4) — the reference logger's human map.

4. **MQTT form** (:func:`mqtt_messages`, spec §11.1) — one message per V datum / alert
   name / error, encoded exactly as Go's ``encoding/json`` would (see :mod:`.gojson`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from fleetgate.protocols.tesla.gojson import (
    Float32,
    float32_value,
    go_json_dumps,
    rfc3339_nanos,
    rfc3339_seconds,
)
from fleetgate.protocols.tesla.proto import (
    vehicle_alert_pb2,
    vehicle_connectivity_pb2,
    vehicle_data_pb2,
    vehicle_error_pb2,
)
from fleetgate.protocols.tesla.transforms import MESSAGE_TYPES, VehicleDatum
from fleetgate.records import Record, format_rfc3339_ms

_TIMESTAMP: Final = "google.protobuf.Timestamp"
_INT64_TYPES: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FIELD_ENUM = vehicle_data_pb2.Field.DESCRIPTOR
_VALUE_FIELDS = vehicle_data_pb2.Value.DESCRIPTOR.fields_by_name


def decode_record_message(record: Record) -> Message | None:
    """The (already transformed) protobuf in ``record.raw``, or None for opaque topics."""
    factory = MESSAGE_TYPES.get(record.topic)
    if factory is None:
        return None
    message = factory()
    try:
        message.ParseFromString(record.raw)
    except DecodeError:
        return None
    return message


def field_name(number: int) -> str:
    """Field enum name, or the number as text for fields newer than our protos."""
    name = _FIELD_NAMES.get(number)
    return name if name is not None else str(number)


def enum_name(fd: Any, number: int) -> str | None:
    """Name of enum value ``number`` of field ``fd``, None for numbers newer than our protos."""
    value = fd.enum_type.values_by_number.get(number)
    return value.name if value is not None else None


def _ts_ms(ts: Any) -> int:
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


# -- 1. protojson -------------------------------------------------------------------------


def _pj_float(value: float, fd: Any) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float32_value(value) if fd.type == FieldDescriptor.TYPE_FLOAT else float(value)


def _pj_scalar(fd: Any, value: Any) -> Any:
    kind = fd.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _pj_message(value)
    if kind == FieldDescriptor.TYPE_ENUM:
        name = enum_name(fd, value)
        return name if name is not None else int(value)
    if kind in _INT64_TYPES:
        return str(value)
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return _pj_float(value, fd)
    if kind == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


# Per message type, the fields in declaration order: ("field", fd, map_value_fd) or
# ("oneof", name, {member name: fd}) at the position of the oneof's first member, so each
# oneof costs one WhichOneof call instead of one per member.
_Plan = list[tuple[str, Any, Any]]
_plans: dict[str, _Plan] = {}


def _plan(desc: Any) -> _Plan:
    plan = _plans.get(desc.full_name)
    if plan is None:
        plan = []
        seen: set[str] = set()
        for fd in desc.fields:
            oneof = fd.containing_oneof
            if oneof is not None:
                if oneof.name not in seen:
                    seen.add(oneof.name)
                    plan.append(("oneof", oneof.name, {f.name: f for f in oneof.fields}))
                continue
            entry: Any = fd.message_type if fd.is_repeated else None
            is_map = entry is not None and entry.GetOptions().map_entry
            map_value = entry.fields_by_name["value"] if is_map else None
            plan.append(("field", fd, map_value))
        _plans[desc.full_name] = plan
    return plan


def _pj_field(message: Message, fd: Any, map_value: Any) -> Any:
    value = getattr(message, fd.name)
    if map_value is not None:
        return {str(k): _pj_scalar(map_value, value[k]) for k in sorted(value)}
    if fd.is_repeated:
        return [_pj_scalar(fd, item) for item in value]
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _pj_message(value) if message.HasField(fd.name) else None
    return _pj_scalar(fd, value)


def _pj_message(message: Message) -> Any:
    desc = message.DESCRIPTOR
    if desc.full_name == _TIMESTAMP:
        return rfc3339_nanos(int(message.seconds), int(message.nanos))  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for kind, item, extra in _plan(desc):
        if kind == "field":
            out[item.json_name] = _pj_field(message, item, extra)
        else:
            which = message.WhichOneof(item)
            if which is not None:
                fd = extra[which]
                out[fd.json_name] = _pj_field(message, fd, None)
    return out


def protojson_dict(message: Message) -> dict[str, Any]:
    """Go protojson (``EmitUnpopulated``) of ``message`` as a dict."""
    result: dict[str, Any] = _pj_message(message)
    return result


def protojson_bytes(record: Record) -> bytes:
    """The ``transmit_decoded_records`` payload of a record (``{}`` for opaque topics)."""
    message = decode_record_message(record)
    if message is None:
        return b"{}"
    return orjson.dumps(protojson_dict(message))


# -- 2. fleetgate data --------------------------------------------------------------------


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
    return {"latitude": _finite(raw.latitude), "longitude": _finite(raw.longitude)}


def _time_natural(raw: Any) -> str:
    return f"{raw.hour:02d}:{raw.minute:02d}:{raw.second:02d}"


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
        return _time_natural
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _generic_message  # Doors, TireLocation: every boolean, proto names
    return None


# Built once from the descriptors, so a datum costs one dict lookup instead of a walk
# through descriptor attributes.
_NATURAL: Final = {name: _natural_converter(fd) for name, fd in _VALUE_FIELDS.items()}
_FIELD_NAMES: Final = {number: value.name for number, value in _FIELD_ENUM.values_by_number.items()}


# Fields whose string values are free text: never read as numbers ("VehicleName": "2024").
TEXT_FIELDS: Final = frozenset(
    {
        "VehicleName", "Version", "SoftwareUpdateVersion", "RouteLine", "DestinationName",
        "MediaNowPlayingArtist", "MediaNowPlayingTitle", "MediaNowPlayingAlbum",
        "MediaNowPlayingStation", "MediaPlaybackSource", "MediaPlaybackStatus",
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
    names = _FIELD_NAMES
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


def _ts_text(message: Message, name: str) -> str | None:
    if not message.HasField(name):
        return None
    return format_rfc3339_ms(_ts_ms(getattr(message, name)))


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
    return _ts_ms(message.created_at)  # type: ignore[attr-defined]


# -- 3. log form (reference logger, spec §11.4) -------------------------------------------

# Value oneof member → the type tag the reference logger uses in verbose mode.
# ``charging_value`` is deliberately absent: the reference does not render it.
_LOG_TAGS: Final = {
    "string_value": "stringValue",
    "location_value": "locationValue",
    "float_value": "floatValue",
    "int_value": "intValue",
    "double_value": "doubleValue",
    "long_value": "longValue",
    "boolean_value": "booleanValue",
    "invalid": "invalid",
    "shift_state_value": "shiftStateValue",
    "lane_assist_level_value": "laneAssistLevel",
    "scheduled_charging_mode_value": "scheduledChargingMode",
    "sentry_mode_state_value": "sentryModeState",
    "speed_assist_level_value": "speedAssistLevel",
    "bms_state_value": "bmsState",
    "buckle_status_value": "buckleStatus",
    "car_type_value": "carType",
    "charge_port_value": "chargePort",
    "charge_port_latch_value": "chargePortLatch",
    "door_value": "doorValue",
    "drive_inverter_state_value": "driveInverterState",
    "hvil_status_value": "hvilStatus",
    "window_state_value": "windowState",
    "seat_fold_position_value": "seatFoldPosition",
    "tractor_air_status_value": "tractorAirStatus",
    "follow_distance_value": "followDistance",
    "forward_collision_sensitivity_value": "forwardCollisionSensitivity",
    "guest_mode_mobile_access_value": "guestModeMobileAccess",
    "trailer_air_status_value": "trailerAirStatus",
    "time_value": "time",
    "detailed_charge_state_value": "detailedChargeState",
    "hvac_auto_mode_value": "hvacAutoMode",
    "cabin_overheat_protection_mode_value": "cabinOverheatProtectionMode",
    "cabin_overheat_protection_temperature_limit_value": "cabinOverheatProtectionTemperatureLimit",
    "defrost_mode_value": "defrostMode",
    "climate_keeper_mode_value": "climateKeeperMode",
    "hvac_power_value": "hvacPower",
    "tire_location_value": "tireLocation",
    "fast_charger_value": "fastChargerType",
    "cable_type_value": "chargingCableType",
    "tonneau_tent_mode_value": "tonneauTentMode",
    "tonneau_position_value": "tonneauPosition",
    "powershare_state_value": "powershareStatus",
    "powershare_stop_reason_value": "powershareStopReason",
    "powershare_type_value": "powershareType",
    "display_state_value": "displayState",
    "pressure_unit_value": "pressureUnit",
    "temperature_unit_value": "temperatureUnit",
    "charge_unit_preference_value": "chargeUnit",
    "distance_unit_value": "distanceUnit",
    "sunroof_installed_state_value": "sunroofInstalledState",
    "turn_signal_state_value": "turnSignalState",
    "media_status_value": "mediaStatus",
}

_DOOR_KEYS: Final = (
    ("DriverFront", "DriverFront"),
    ("PassengerFront", "PassengerFront"),
    ("DriverRear", "DriverRear"),
    ("PassengerRear", "PassengerRear"),
    ("TrunkFront", "TrunkFront"),
    ("TrunkRear", "TrunkRear"),
)
_TIRE_KEYS: Final = (
    ("FrontLeft", "front_left"),
    ("FrontRight", "front_right"),
    ("RearLeft", "rear_left"),
    ("RearRight", "rear_right"),
)
# Semi trucks (VIN character 4 is "T") name the axles differently.
_SEMI_TIRE_KEYS: Final = (
    ("FrontLeft", "front_left"),
    ("FrontRight", "front_right"),
    ("SemiMiddleAxleLeft", "rear_left"),
    ("SemiMiddleAxleRight", "rear_right"),
    ("SemiMiddleAxleLeft2", "semi_middle_axle_left_2"),
    ("SemiMiddleAxleRight2", "semi_middle_axle_right_2"),
    ("SemiRearAxleLeft", "semi_rear_axle_left"),
    ("SemiRearAxleRight", "semi_rear_axle_right"),
    ("SemiRearAxleLeft2", "semi_rear_axle_left_2"),
    ("SemiRearAxleRight2", "semi_rear_axle_right_2"),
)


def _enum_string(fd: Any, number: int) -> str:
    """Go's ``Enum.String()``: the name, or the number as text."""
    return enum_name(fd, number) or str(number)


def _log_value(value: vehicle_data_pb2.Value, verbose: bool, vin: str) -> tuple[bool, Any]:
    which = value.WhichOneof("value")
    tag = _LOG_TAGS.get(which or "")
    if which is None or tag is None:
        return False, None
    raw = getattr(value, which)
    fd = _VALUE_FIELDS[which]
    out: Any
    if which == "invalid":
        out = True if verbose else "<invalid>"
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        out = _enum_string(fd, raw)
    elif fd.type == FieldDescriptor.TYPE_FLOAT:
        out = float32_value(raw)
    elif which == "location_value":
        out = {"latitude": raw.latitude, "longitude": raw.longitude}
    elif which == "time_value":
        out = f"{raw.hour:02d}:{raw.minute:02d}:{raw.second:02d}"
    elif which == "door_value":
        out = {key: getattr(raw, attr) for key, attr in _DOOR_KEYS}
    elif which == "tire_location_value":
        keys = _SEMI_TIRE_KEYS if vin[3:4] == "T" else _TIRE_KEYS
        out = {key: getattr(raw, attr) for key, attr in keys}
    else:
        out = raw
    return True, ({tag: out} if verbose else out)


def log_form(record: Record, verbose: bool) -> Any:
    """The ``data`` of the reference logger's ``record_payload`` line."""
    message = decode_record_message(record)
    if isinstance(message, vehicle_data_pb2.Payload):
        data: dict[str, Any] = {
            "Vin": message.vin,
            "CreatedAt": rfc3339_seconds(int(message.created_at.seconds)),
            "IsResend": message.is_resend,
        }
        for datum in message.data:
            if not datum.HasField("value"):
                continue
            ok, value = _log_value(datum.value, verbose, record.device_id)
            if ok:
                data[field_name(datum.key)] = value
        return data
    if isinstance(message, vehicle_alert_pb2.VehicleAlerts):
        audience = vehicle_alert_pb2.VehicleAlert.DESCRIPTOR.fields_by_name["audiences"]
        alerts = []
        for alert in message.alerts:
            entry: dict[str, Any] = {"Name": alert.name}
            if alert.HasField("started_at"):
                entry["StartedAt"] = int(alert.started_at.seconds)
            if alert.HasField("ended_at"):
                entry["EndedAt"] = int(alert.ended_at.seconds)
            entry["Audiences"] = [_enum_string(audience, a) for a in alert.audiences] or None
            alerts.append(entry)
        return alerts
    if isinstance(message, vehicle_error_pb2.VehicleErrors):
        errors = []
        for error in message.errors:
            entry = {"Name": error.name, "Body": error.body, "Tags": dict(error.tags) or None}
            if error.HasField("created_at"):
                entry["CreatedAt"] = int(error.created_at.seconds)
            errors.append(entry)
        return errors
    if isinstance(message, vehicle_connectivity_pb2.VehicleConnectivity):
        status = vehicle_connectivity_pb2.VehicleConnectivity.DESCRIPTOR.fields_by_name["status"]
        return {
            "Vin": message.vin,
            "ConnectionID": message.connection_id,
            "NetworkInterface": message.network_interface,
            "Status": _enum_string(status, message.status),
            "CreatedAt": int(message.created_at.seconds),
        }
    # Opaque topics: the reference cannot render them; show size rather than nothing.
    return {"topic": record.topic, "payload_bytes": len(record.raw)}


# -- 4. MQTT form (spec §11.1) ------------------------------------------------------------

# Oneof members the reference renders with Enum.String() (unknown number → "7");
# every other enum goes through its generic path (unknown number → 7).
_MQTT_STRING_ENUMS: Final = frozenset(
    {
        "shift_state_value",
        "lane_assist_level_value",
        "scheduled_charging_mode_value",
        "sentry_mode_state_value",
        "speed_assist_level_value",
        "bms_state_value",
        "buckle_status_value",
        "car_type_value",
        "charge_port_value",
        "charge_port_latch_value",
        "drive_inverter_state_value",
        "hvil_status_value",
        "window_state_value",
        "seat_fold_position_value",
        "tractor_air_status_value",
        "follow_distance_value",
        "forward_collision_sensitivity_value",
        "guest_mode_mobile_access_value",
        "trailer_air_status_value",
        "detailed_charge_state_value",
    }
)


def _populated(message: Message) -> dict[str, Any]:
    """The reference's generic reflection map: populated fields only, proto names."""
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if fd.is_repeated:
            continue  # the Value messages have no repeated fields; the reference skips lists
        if fd.type == FieldDescriptor.TYPE_ENUM:
            name = enum_name(fd, value)
            out[fd.name] = name if name is not None else int(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            out[fd.name] = _populated(value)
        elif fd.type == FieldDescriptor.TYPE_BYTES:
            out[fd.name] = base64.b64encode(value).decode("ascii")
        else:
            out[fd.name] = float(value) if isinstance(value, float) else value
    return out


def mqtt_value(value: vehicle_data_pb2.Value) -> Any:
    """One datum value as the reference MQTT dispatcher renders it."""
    which = value.WhichOneof("value")
    if which is not None:
        raw = getattr(value, which)
        fd = _VALUE_FIELDS[which]
        if which == "invalid":
            return None
        if which == "float_value":
            return Float32(raw)
        if which == "location_value":
            return {"latitude": raw.latitude, "longitude": raw.longitude}
        if which == "door_value":
            return {key: getattr(raw, attr) for key, attr in _DOOR_KEYS}
        if which == "time_value":
            return f"{raw.hour:02d}:{raw.minute:02d}:{raw.second:02d}"
        if which in _MQTT_STRING_ENUMS:
            return _enum_string(fd, raw)
        if fd.type not in (FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_MESSAGE):
            return raw
    # Generic path: a single populated member is returned bare, otherwise the map.
    fields = _populated(value)
    if len(fields) == 1:
        return next(iter(fields.values()))
    return fields


def _alert_map(alert: vehicle_alert_pb2.VehicleAlert, audience_fd: Any) -> Any:
    out: dict[str, Any] = {}
    if alert.HasField("started_at"):
        out["StartedAt"] = rfc3339_seconds(int(alert.started_at.seconds))
    if alert.HasField("ended_at"):
        out["EndedAt"] = rfc3339_seconds(int(alert.ended_at.seconds))
    out["Audiences"] = [_enum_string(audience_fd, a) for a in alert.audiences] or None
    return out


def mqtt_messages(record: Record, topic_base: str) -> list[tuple[str, bytes]]:
    """``(mqtt topic, payload)`` pairs the reference MQTT dispatcher would publish.

    Go publishes in map order (random); here the order is deterministic: V data in payload
    order (a repeated field once, with its last value), then alert ``current`` messages,
    then ``history``, in order of first appearance.
    """
    message = decode_record_message(record)
    base = f"{topic_base}/{record.device_id}"
    if isinstance(message, vehicle_data_pb2.Payload):
        values: dict[str, Any] = {}
        for datum in message.data:
            values[field_name(datum.key)] = mqtt_value(datum.value)
        return [(f"{base}/v/{key}", go_json_dumps(value)) for key, value in values.items()]
    if isinstance(message, vehicle_alert_pb2.VehicleAlerts):
        audience = vehicle_alert_pb2.VehicleAlert.DESCRIPTOR.fields_by_name["audiences"]
        history: dict[str, list[vehicle_alert_pb2.VehicleAlert]] = {}
        current: dict[str, vehicle_alert_pb2.VehicleAlert] = {}
        for alert in message.alerts:
            history.setdefault(alert.name, []).append(alert)
            if alert.HasField("started_at"):
                best = current.get(alert.name)
                if best is None or _ts_key(alert.started_at) > _ts_key(best.started_at):
                    current[alert.name] = alert
        out = [
            (f"{base}/alerts/{name}/current", go_json_dumps(_alert_map(alert, audience)))
            for name, alert in current.items()
        ]
        out += [
            (
                f"{base}/alerts/{name}/history",
                go_json_dumps([_alert_map(alert, audience) for alert in alerts]),
            )
            for name, alerts in history.items()
        ]
        return out
    if isinstance(message, vehicle_error_pb2.VehicleErrors):
        result = []
        for error in message.errors:
            body: dict[str, Any] = {"Body": error.body, "Tags": dict(error.tags) or None}
            if error.HasField("created_at"):
                body["CreatedAt"] = rfc3339_seconds(int(error.created_at.seconds))
            result.append((f"{base}/errors/{error.name}", go_json_dumps(body)))
        return result
    if isinstance(message, vehicle_connectivity_pb2.VehicleConnectivity):
        status = vehicle_connectivity_pb2.VehicleConnectivity.DESCRIPTOR.fields_by_name["status"]
        body = {
            "ConnectionId": message.connection_id,
            "Status": _enum_string(status, message.status),
            "CreatedAt": rfc3339_seconds(int(message.created_at.seconds)),
        }
        return [(f"{base}/connectivity", go_json_dumps(body))]
    return []  # the reference cannot render opaque topics to MQTT


def _ts_key(ts: Any) -> tuple[int, int]:
    return (int(ts.seconds), int(ts.nanos))


def wire_form(record: Record, transmit_decoded: bool) -> bytes:
    """Bytes dispatchers forward: the transformed protobuf, or its protojson."""
    if transmit_decoded:
        return protojson_bytes(record)
    return record.raw
