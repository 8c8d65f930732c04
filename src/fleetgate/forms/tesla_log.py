"""The reference logger's human-readable map of a Tesla record (spec §11.4)."""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor

from fleetgate.protocols.tesla.gojson import float32_value, rfc3339_seconds
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
    enum_string,
    field_name,
    location_dict,
    time_text,
    tire_keys,
)
from fleetgate.records import Record

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


def _log_value(value: vehicle_data_pb2.Value, verbose: bool, vin: str) -> tuple[bool, Any]:
    which = value.WhichOneof("value")
    tag = _LOG_TAGS.get(which or "")
    if which is None or tag is None:
        return False, None
    raw = getattr(value, which)
    fd = VALUE_FIELDS[which]
    out: Any
    if which == "invalid":
        out = True if verbose else "<invalid>"
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        out = enum_string(fd, raw)
    elif fd.type == FieldDescriptor.TYPE_FLOAT:
        out = float32_value(raw)
    elif which == "location_value":
        out = location_dict(raw)
    elif which == "time_value":
        out = time_text(raw)
    elif which == "door_value":
        out = {key: getattr(raw, attr) for key, attr in DOOR_KEYS}
    elif which == "tire_location_value":
        out = {key: getattr(raw, attr) for key, attr in tire_keys(vin)}
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
            entry["Audiences"] = [enum_string(audience, a) for a in alert.audiences] or None
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
            "Status": enum_string(status, message.status),
            "CreatedAt": int(message.created_at.seconds),
        }
    # Opaque topics: the reference cannot render them; show size rather than nothing.
    return {"topic": record.topic, "payload_bytes": len(record.raw)}
