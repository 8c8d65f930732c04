"""The reference MQTT dispatcher's messages for a Tesla record (spec §11.1): one message per
V datum, alert name or error, encoded exactly as Go's ``encoding/json`` would (see
:mod:`fleetgate.protocols.tesla.gojson`)."""

from __future__ import annotations

import base64
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fleetgate.protocols.tesla.gojson import Float32, go_json_dumps, rfc3339_seconds
from fleetgate.protocols.tesla.proto import (
    vehicle_alert_pb2,
    vehicle_connectivity_pb2,
    vehicle_data_pb2,
    vehicle_error_pb2,
)
from fleetgate.protocols.tesla.values import (
    DOOR_KEYS,
    VALUE_FIELDS,
    decode_record_message,
    enum_name,
    enum_string,
    field_name,
    location_dict,
    time_text,
)
from fleetgate.records import Record

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
        fd = VALUE_FIELDS[which]
        if which == "invalid":
            return None
        if which == "float_value":
            return Float32(raw)
        if which == "location_value":
            return location_dict(raw)
        if which == "door_value":
            return {key: getattr(raw, attr) for key, attr in DOOR_KEYS}
        if which == "time_value":
            return time_text(raw)
        if which in _MQTT_STRING_ENUMS:
            return enum_string(fd, raw)
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
    out["Audiences"] = [enum_string(audience_fd, a) for a in alert.audiences] or None
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
            "Status": enum_string(status, message.status),
            "CreatedAt": rfc3339_seconds(int(message.created_at.seconds)),
        }
        return [(f"{base}/connectivity", go_json_dumps(body))]
    return []  # the reference cannot render opaque topics to MQTT


def _ts_key(ts: Any) -> tuple[int, int]:
    return (int(ts.seconds), int(ts.nanos))
