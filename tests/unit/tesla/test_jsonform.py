"""JSON forms: protojson (§9.4), fleetgate data, reference logger (§11.4), MQTT (§11.1)."""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
import pytest
from google.protobuf.message import Message
from hypothesis import given, settings

import fleetgate.protocols.tesla  # noqa: F401 - registers the Tesla forms
from fleetgate.forms import mqtt_form, wire_payload
from fleetgate.forms.tesla_log import log_form
from fleetgate.forms.tesla_mqtt import mqtt_messages
from fleetgate.protocols.tesla.natural import (
    natural_data,
    natural_value,
    natural_vehicle_data,
    transform_vehicle_data_natural,
)
from fleetgate.protocols.tesla.proto import vehicle_alert_pb2 as va
from fleetgate.protocols.tesla.proto import vehicle_connectivity_pb2 as vc
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.protocols.tesla.proto import vehicle_error_pb2 as ve
from fleetgate.protocols.tesla.protojson import protojson_dict
from fleetgate.protocols.tesla.transforms import transform_payload, transform_vehicle_data_entries
from fleetgate.records import Record, record_json
from fleetgate.sinks.base import SinkContext
from fleetgate.sinks.logger import LoggerSink
from tests.unit.tesla import oracle
from tests.unit.tesla.helpers import VIN, payload


def record_for(topic: str, message: Message | bytes, vin: str = VIN) -> Record:
    raw = message if isinstance(message, bytes) else message.SerializeToString()
    decoded, raw = transform_payload(topic, raw, vin)
    return Record(
        source="tesla",
        device_id=vin,
        topic=topic,
        created_at=1,
        received_at=2,
        data=natural_data(topic, decoded),
        raw=raw,
        meta={"txid": "t"},
    )


def mqtt(record: Record, base: str = "telemetry") -> dict[str, Any]:
    return {topic: json.loads(body) for topic, body in mqtt_messages(record, base)}


# -- protojson ----------------------------------------------------------------------------


def test_protojson_matches_spec_example() -> None:
    message = payload((vd.VehicleName, {"string_value": "cybertruck"}), vin="42")
    assert protojson_dict(message) == json.loads(
        '{"data":[{"key":"VehicleName","value":{"stringValue":"cybertruck"}}],'
        '"createdAt":null,"vin":"42","isResend":false}'
    )


def test_protojson_scalars_enums_and_unset_messages() -> None:
    message = payload(
        (vd.Odometer, {"long_value": 2**40}),
        (vd.BatteryLevel, {"float_value": 0.1}),
        (vd.Gear, {"shift_state_value": vd.ShiftStateD}),
        (vd.DoorState, {"door_value": {"DriverFront": True}}),
        (999, {"shift_state_value": 42}),  # unknown key and unknown enum number
        (vd.Soc, {}),  # datum without a value
        (vd.PackVoltage, {"double_value": float("nan")}),
        created_at=1692044886,
    )
    message.created_at.nanos = 337_000_000
    out = protojson_dict(message)
    values = [d.get("value") for d in out["data"]]
    assert values[0] == {"longValue": str(2**40)}
    assert values[1] == {"floatValue": 0.1}
    assert values[2] == {"shiftStateValue": "ShiftStateD"}
    assert values[3] == {
        "doorValue": {
            "DriverFront": True,
            "DriverRear": False,
            "PassengerFront": False,
            "PassengerRear": False,
            "TrunkFront": False,
            "TrunkRear": False,
        }
    }
    assert out["data"][4] == {"key": 999, "value": {"shiftStateValue": 42}}
    assert out["data"][5] == {"key": "Soc", "value": None}
    assert values[6] == {"doubleValue": "NaN"}
    assert out["createdAt"] == "2023-08-14T20:28:06.337Z"
    assert list(out) == ["data", "createdAt", "vin", "isResend"]  # field-number order
    # serialises with orjson without help, 0.1 stays 0.1
    assert b'"floatValue":0.1' in orjson.dumps(out)


def test_protojson_alerts_errors_connectivity() -> None:
    alerts = va.VehicleAlerts()
    alert = alerts.alerts.add(name="A", audiences=[va.Customer, 7])
    alert.started_at.seconds = 10
    assert protojson_dict(alerts) == {
        "alerts": [
            {
                "name": "A",
                "audiences": ["Customer", 7],
                "startedAt": "1970-01-01T00:00:10Z",
                "endedAt": None,
            }
        ],
        "createdAt": None,
        "vin": "",
    }
    errors = ve.VehicleErrors()
    err = errors.errors.add(name="E")
    err.tags["b"] = "2"
    err.tags["a"] = "1"
    errors.errors.add(name="F")
    out = protojson_dict(errors)
    assert out["errors"][0]["tags"] == {"a": "1", "b": "2"}
    assert out["errors"][1] == {"createdAt": None, "name": "F", "tags": {}, "body": ""}
    assert protojson_dict(vc.VehicleConnectivity(status=vc.DISCONNECTED)) == {
        "vin": "",
        "connectionId": "",
        "status": "DISCONNECTED",
        "createdAt": None,
        "networkInterface": "",
    }
    assert protojson_dict(ve.VehicleErrors()) == {"errors": [], "createdAt": None, "vin": ""}


def test_wire_form_registration() -> None:
    rec = record_for("V", payload((vd.VehicleName, {"string_value": "x"})))
    assert wire_payload(rec, transmit_decoded=False) == rec.raw
    assert json.loads(wire_payload(rec, transmit_decoded=True))["vin"] == VIN
    opaque = record_for("metrics", b"\x01\x02")
    assert wire_payload(opaque, transmit_decoded=False) == b"\x01\x02"
    assert wire_payload(opaque, transmit_decoded=True) == b"{}"
    assert mqtt_form("tesla") is mqtt_messages


# -- fleetgate data -----------------------------------------------------------------------


def test_natural_data_for_v() -> None:
    message = payload(
        (vd.VehicleName, {"string_value": "My Tesla"}),
        (vd.Soc, {"string_value": "75.3"}),  # numeric strings become numbers
        (vd.EstBatteryRange, {"string_value": "1.2e3"}),
        (vd.ChargeLimitSoc, {"string_value": "80"}),
        (vd.FastChargerPresent, {"string_value": "true"}),
        (vd.ChargeState, {"string_value": "Idle"}),
        (vd.Version, {"string_value": "2024"}),  # free text stays text
        (vd.RatedRange, {"string_value": "12 km"}),
        (vd.BatteryLevel, {"float_value": 0.1}),
        (vd.Odometer, {"double_value": 12345.6}),
        (vd.ChargeAmps, {"int_value": 32}),
        (vd.LifetimeEnergyUsed, {"long_value": 2**40}),
        (vd.Locked, {"boolean_value": True}),
        (vd.Location, {"location_value": {"latitude": 1.5, "longitude": -2.5}}),
        (vd.Gear, {"shift_state_value": vd.ShiftStateD}),
        (vd.CarType, {"car_type_value": 99}),
        (vd.DoorState, {"door_value": {"TrunkRear": True}}),
        (vd.TpmsSoftWarnings, {"tire_location_value": {"front_left": True}}),
        (vd.ScheduledDepartureTime, {"time_value": {"hour": 7, "minute": 5}}),
        (vd.DCDCEnable, {"invalid": True}),
        (vd.Hvil, {}),
        (1000, {"int_value": 1}),
        is_resend=True,
    )
    data = natural_data("V", message)
    assert data["VehicleName"] == "My Tesla"
    assert data["Soc"] == 75.3
    assert data["EstBatteryRange"] == 1200.0
    assert data["ChargeLimitSoc"] == 80
    assert isinstance(data["ChargeLimitSoc"], int)
    assert data["FastChargerPresent"] is True
    assert data["ChargeState"] == "Idle"
    assert data["Version"] == "2024"
    assert data["RatedRange"] == "12 km"
    assert data["BatteryLevel"] == 0.1
    assert data["Odometer"] == 12345.6
    assert data["ChargeAmps"] == 32
    assert data["LifetimeEnergyUsed"] == 2**40
    assert data["Locked"] is True
    assert data["Location"] == {"latitude": 1.5, "longitude": -2.5}
    assert data["Gear"] == "ShiftStateD"
    assert data["CarType"] == 99
    assert data["DoorState"] == {
        "DriverFront": False,
        "DriverRear": False,
        "PassengerFront": False,
        "PassengerRear": False,
        "TrunkFront": False,
        "TrunkRear": True,
    }
    tires = data["TpmsSoftWarnings"]
    assert tires["front_left"] is True
    assert len(tires) == 10
    assert not any(v for k, v in tires.items() if k != "front_left")
    assert data["ScheduledDepartureTime"] == "07:05:00"
    assert data["DCDCEnable"] is None
    assert data["Hvil"] is None
    assert data["1000"] == 1
    assert data["is_resend"] is True
    assert "is_resend" not in natural_data("V", payload())


def test_natural_data_other_topics() -> None:
    alerts = va.VehicleAlerts()
    alert = alerts.alerts.add(name="ChargePortFault", audiences=[va.Customer, va.Service])
    alert.started_at.seconds = 1692044886
    alert.started_at.nanos = 337_000_000
    assert natural_data("alerts", alerts) == {
        "alerts": [
            {
                "name": "ChargePortFault",
                "audiences": ["Customer", "Service"],
                "started_at": "2023-08-14T20:28:06.337Z",
                "ended_at": None,
            }
        ]
    }
    errors = ve.VehicleErrors()
    errors.errors.add(name="E", body="b").tags["k"] = "v"
    assert natural_data("errors", errors) == {
        "errors": [{"name": "E", "body": "b", "tags": {"k": "v"}, "created_at": None}]
    }
    conn = vc.VehicleConnectivity(connection_id="c", status=vc.CONNECTED, network_interface="wifi")
    assert natural_data("connectivity", conn) == {
        "connection_id": "c",
        "status": "CONNECTED",
        "network_interface": "wifi",
    }
    assert natural_data("metrics", None) == {}


def test_record_json_of_a_tesla_record_is_plain_json() -> None:
    rec = record_for("V", payload((vd.BatteryLevel, {"float_value": 0.1})))
    assert json.loads(record_json(rec))["data"] == {"BatteryLevel": 0.1}


# -- reference logger form ----------------------------------------------------------------


def test_log_form_v_plain_and_verbose() -> None:
    message = payload(
        (vd.VehicleName, {"string_value": "x"}),
        (vd.DCDCEnable, {"invalid": True}),
        (vd.ChargeState, {"charging_value": vd.ChargeStateCharging}),  # not rendered
        (vd.Gear, {"shift_state_value": vd.ShiftStateP}),
        (vd.TpmsSoftWarnings, {"tire_location_value": {"rear_left": True}}),
        (vd.Hvil, {}),  # skipped
        created_at=1692044886,
    )
    rec = record_for("V", message, vin="5YJ3E1EA7KF000000")
    assert log_form(rec, False) == {
        "Vin": "5YJ3E1EA7KF000000",
        "CreatedAt": "2023-08-14T20:28:06Z",
        "IsResend": False,
        "VehicleName": "x",
        "DCDCEnable": "<invalid>",
        "Gear": "ShiftStateP",
        "TpmsSoftWarnings": {
            "FrontLeft": False,
            "FrontRight": False,
            "RearLeft": True,
            "RearRight": False,
        },
    }
    verbose = log_form(rec, True)
    assert verbose["VehicleName"] == {"stringValue": "x"}
    assert verbose["DCDCEnable"] == {"invalid": True}
    assert verbose["Gear"] == {"shiftStateValue": "ShiftStateP"}


def test_log_form_semi_tire_names() -> None:
    message = payload((vd.TpmsSoftWarnings, {"tire_location_value": {"rear_left": True}}))
    tires = log_form(record_for("V", message, vin="1TTT000"), False)["TpmsSoftWarnings"]
    assert tires["SemiMiddleAxleLeft"] is True
    assert len(tires) == 10


def test_log_form_alerts_errors_connectivity() -> None:
    alerts = va.VehicleAlerts()
    alert = alerts.alerts.add(name="A", audiences=[va.ServiceFix])
    alert.started_at.seconds = 1692044886337  # ms, fixed by the transform
    alerts.alerts.add(name="B")
    assert log_form(record_for("alerts", alerts), False) == [
        {"Name": "A", "StartedAt": 1692044886, "Audiences": ["ServiceFix"]},
        {"Name": "B", "Audiences": None},
    ]
    errors = ve.VehicleErrors()
    err = errors.errors.add(name="E", body="b")
    err.created_at.seconds = 5
    assert log_form(record_for("errors", errors), False) == [
        {"Name": "E", "Body": "b", "Tags": None, "CreatedAt": 5}
    ]
    conn = vc.VehicleConnectivity(connection_id="c", status=vc.CONNECTED, network_interface="wifi")
    conn.created_at.seconds = 9
    assert log_form(record_for("connectivity", conn), False) == {
        "Vin": VIN,
        "ConnectionID": "c",
        "NetworkInterface": "wifi",
        "Status": "CONNECTED",
        "CreatedAt": 9,
    }


# -- MQTT form ----------------------------------------------------------------------------


def test_mqtt_vehicle_name_like_the_reference_integration_test() -> None:
    rec = record_for("V", payload((vd.VehicleName, {"string_value": "My Test Vehicle"})))
    assert mqtt_messages(rec, "telemetry") == [
        ("telemetry/device-1/v/VehicleName", b'"My Test Vehicle"')
    ]


def test_mqtt_value_shapes() -> None:
    message = payload(
        (vd.BatteryLevel, {"float_value": 0.1}),
        (vd.Soc, {"float_value": 75.5}),
        (vd.Odometer, {"double_value": 1e21}),
        (vd.ChargeAmps, {"int_value": -3}),
        (vd.LifetimeEnergyUsed, {"long_value": 2**62}),
        (vd.Locked, {"boolean_value": False}),
        (vd.VehicleName, {"string_value": "<b>&"}),
        (vd.Location, {"string_value": "(37.412374 S, 122.145867 E)"}),
        (vd.DoorState, {"door_value": {"DriverFront": True}}),
        (vd.ScheduledDepartureTime, {"time_value": {"hour": 23, "minute": 59, "second": 1}}),
        (vd.Gear, {"shift_state_value": vd.ShiftStateR}),
        (vd.CarType, {"car_type_value": 42}),  # reference String(): "42"
        (vd.HvacAutoMode, {"hvac_auto_mode_value": 42}),  # generic path: 42
        (vd.HvacPower, {"hvac_power_value": vd.HvacPowerStateOn}),
        (vd.ChargeState, {"charging_value": vd.ChargeStateCharging}),
        (vd.DCDCEnable, {"invalid": True}),
        (vd.TpmsSoftWarnings, {"tire_location_value": {"front_left": True, "rear_right": True}}),
        (vd.TpmsHardWarnings, {"tire_location_value": {}}),
        (777, {"int_value": 1}),
    )
    out = dict(mqtt_messages(record_for("V", message), "base"))
    p = "base/device-1/v/"
    assert out[p + "BatteryLevel"] == b"0.1"
    assert out[p + "Soc"] == b"75.5"
    assert out[p + "Odometer"] == b"1e+21"
    assert out[p + "ChargeAmps"] == b"-3"
    assert out[p + "LifetimeEnergyUsed"] == str(2**62).encode()
    assert out[p + "Locked"] == b"false"
    assert out[p + "VehicleName"] == b'"\\u003cb\\u003e\\u0026"'
    assert out[p + "Location"] == b'{"latitude":-37.412374,"longitude":122.145867}'
    assert out[p + "DoorState"] == (
        b'{"DriverFront":true,"DriverRear":false,"PassengerFront":false,'
        b'"PassengerRear":false,"TrunkFront":false,"TrunkRear":false}'
    )
    assert out[p + "ScheduledDepartureTime"] == b'"23:59:01"'
    assert out[p + "Gear"] == b'"ShiftStateR"'
    assert out[p + "CarType"] == b'"42"'
    assert out[p + "HvacAutoMode"] == b"42"
    assert out[p + "HvacPower"] == b'"HvacPowerStateOn"'
    assert out[p + "ChargeState"] == b'"ChargeStateCharging"'
    assert out[p + "DCDCEnable"] == b"null"
    assert out[p + "TpmsSoftWarnings"] == b'{"front_left":true,"rear_right":true}'
    assert out[p + "TpmsHardWarnings"] == b"{}"
    assert out[p + "777"] == b"1"


def test_mqtt_repeated_field_published_once_with_last_value() -> None:
    message = payload((vd.Soc, {"int_value": 1}), (vd.Soc, {"int_value": 2}))
    assert mqtt_messages(record_for("V", message), "b") == [("b/device-1/v/Soc", b"2")]


def test_mqtt_alerts_current_and_history() -> None:
    alerts = va.VehicleAlerts()
    first = alerts.alerts.add(name="A", audiences=[va.Customer, va.Service])
    first.started_at.seconds = 100
    latest = alerts.alerts.add(name="A")
    latest.started_at.seconds = 200
    latest.ended_at.seconds = 300
    alerts.alerts.add(name="A")  # no started_at: never current
    tie = alerts.alerts.add(name="A")
    tie.started_at.seconds = 200  # equal start: the first seen stays current
    nostart = alerts.alerts.add(name="B")
    nostart.ended_at.seconds = 5
    out = mqtt(record_for("alerts", alerts), "t")
    assert out["t/device-1/alerts/A/current"] == {
        "Audiences": None,
        "EndedAt": "1970-01-01T00:05:00Z",
        "StartedAt": "1970-01-01T00:03:20Z",
    }
    assert out["t/device-1/alerts/A/history"] == [
        {"Audiences": ["Customer", "Service"], "StartedAt": "1970-01-01T00:01:40Z"},
        {"Audiences": None, "EndedAt": "1970-01-01T00:05:00Z", "StartedAt": "1970-01-01T00:03:20Z"},
        {"Audiences": None},
        {"Audiences": None, "StartedAt": "1970-01-01T00:03:20Z"},
    ]
    assert "t/device-1/alerts/B/current" not in out
    assert out["t/device-1/alerts/B/history"] == [
        {"Audiences": None, "EndedAt": "1970-01-01T00:00:05Z"}
    ]
    assert all("Name" not in json.dumps(v) for v in out.values())


def test_mqtt_errors_and_connectivity() -> None:
    errors = ve.VehicleErrors()
    err = errors.errors.add(name="E1", body="boom")
    err.tags["z"] = "1"
    err.tags["a"] = "2"
    err.created_at.seconds = 1692044886
    errors.errors.add(name="E2")
    raw = dict(mqtt_messages(record_for("errors", errors), "t"))
    assert raw["t/device-1/errors/E1"] == (
        b'{"Body":"boom","CreatedAt":"2023-08-14T20:28:06Z","Tags":{"a":"2","z":"1"}}'
    )
    assert raw["t/device-1/errors/E2"] == b'{"Body":"","Tags":null}'
    conn = vc.VehicleConnectivity(connection_id="c-1", status=vc.DISCONNECTED)
    conn.created_at.seconds = 1692044886
    assert mqtt_messages(record_for("connectivity", conn), "t") == [
        (
            "t/device-1/connectivity",
            b'{"ConnectionId":"c-1","CreatedAt":"2023-08-14T20:28:06Z","Status":"DISCONNECTED"}',
        )
    ]


def test_mqtt_opaque_topic_publishes_nothing() -> None:
    assert mqtt_messages(record_for("metrics", b"\x01"), "t") == []


@pytest.mark.parametrize("base", ["telemetry", "a/b"])
def test_mqtt_topic_base_is_first_level(base: str) -> None:
    rec = record_for("V", payload((vd.Soc, {"int_value": 1})))
    assert mqtt_messages(rec, base)[0][0] == f"{base}/device-1/v/Soc"


async def test_logger_sink_uses_the_reference_log_form(caplog: pytest.LogCaptureFixture) -> None:
    rec = record_for("V", payload((vd.VehicleName, {"string_value": "x"}), created_at=0))
    sink = LoggerSink({"verbose": True}, SinkContext())
    with caplog.at_level(logging.INFO, logger="fleetgate.records"):
        await sink.publish([rec])
    [line] = caplog.records
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["vin"] == VIN
    assert fields["metadata"]["txtype"] == "V"
    assert fields["data"] == {
        "Vin": VIN,
        "CreatedAt": "1970-01-01T00:00:00Z",
        "IsResend": False,
        "VehicleName": {"stringValue": "x"},
    }
    orjson.dumps(fields)


# -- lookup tables against the descriptor walk --------------------------------------------


@settings(max_examples=400, deadline=None)
@given(oracle.v_payloads())
def test_natural_data_equals_the_descriptor_walk(message: vd.Payload) -> None:
    expected = oracle.typed(oracle.v_data(message))
    assert oracle.typed(natural_data("V", message)) == expected
    entries = [(d.key, d.value.WhichOneof("value"), d.value) for d in message.data]
    assert oracle.typed(natural_vehicle_data(entries, message.is_resend)) == expected
    for datum in message.data:
        assert oracle.typed(natural_value(datum.value)) == oracle.typed(
            oracle.value_data(datum.value)
        )


@settings(max_examples=400, deadline=None)
@given(oracle.v_payloads())
def test_one_pass_v_transform_equals_transform_then_data(message: vd.Payload) -> None:
    # The frame path's one pass against the two steps it replaces: same data, same bytes.
    two_steps = vd.Payload()
    two_steps.CopyFrom(message)
    entries = transform_vehicle_data_entries(two_steps, VIN)
    expected = oracle.typed(natural_vehicle_data(entries, two_steps.is_resend))
    one_pass = vd.Payload()
    one_pass.CopyFrom(message)
    assert oracle.typed(transform_vehicle_data_natural(one_pass, VIN)) == expected
    assert one_pass.SerializeToString() == two_steps.SerializeToString()
