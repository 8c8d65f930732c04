"""Per-topic payload transforms (spec §9.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.tesla.proto import vehicle_alert_pb2 as va
from fleetgate.protocols.tesla.proto import vehicle_connectivity_pb2 as vc
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.protocols.tesla.proto import vehicle_error_pb2 as ve
from fleetgate.protocols.tesla.transforms import (
    MAX_SECONDS,
    PayloadError,
    parse_location,
    rewrite_scientific,
    transform_payload,
    transform_vehicle_data_entries,
)
from tests.unit.tesla import oracle
from tests.unit.tesla.helpers import payload

# -- Location -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(37.412374 S, 122.145867 E)", (-37.412374, 122.145867)),
        ("(37.412374 N, 122.145867 W)", (37.412374, -122.145867)),
        ("(37.412374 S, 122.145867 W)", (-37.412374, -122.145867)),
        ("(0.000000 N, 0.000000 E)", (0.0, 0.0)),
        ("( 37.5   N,   122 E)", (37.5, 122.0)),  # blanks are flexible, as in Go's Sscanf
        ("(37.5 N, 122 E) trailing", (37.5, 122.0)),  # trailing input is ignored
        ("(-1.5 N, 2e1 E)", (-1.5, 20.0)),
        ("(37.5 X, 122 E)", None),
        ("(37.5 N, 122 Q)", None),
        ("(37.5 n, 122 e)", None),
        ("37.5 N, 122 E", None),
        ("(37.5 N 122 E)", None),
        ("(37.5 N , 122 E)", None),  # the comma must follow the hemisphere letter directly
        ("", None),
        ("(abc N, 1 E)", None),
    ],
)
def test_parse_location(text: str, expected: tuple[float, float] | None) -> None:
    assert parse_location(text) == expected


def _transformed_v(message: vd.Payload, vin: str = "VIN1") -> vd.Payload:
    out_message, raw = transform_payload("V", message.SerializeToString(), vin)
    decoded = vd.Payload.FromString(raw)
    assert out_message == decoded
    return decoded


def test_location_string_becomes_location_value_and_vin_is_set() -> None:
    out = _transformed_v(
        payload(
            (vd.VehicleName, {"string_value": "My Test Vehicle"}),
            (vd.Location, {"string_value": "(37.412374 S, 122.145867 E)"}),
            vin="spoofed",
        )
    )
    assert out.vin == "VIN1"
    assert out.data[0].value.string_value == "My Test Vehicle"
    loc = out.data[1].value
    assert loc.WhichOneof("value") == "location_value"
    assert (loc.location_value.latitude, loc.location_value.longitude) == (-37.412374, 122.145867)


def test_only_first_location_datum_is_considered() -> None:
    out = _transformed_v(
        payload(
            (vd.Location, {"string_value": "not a location"}),
            (vd.Location, {"string_value": "(1 N, 2 E)"}),
        )
    )
    assert out.data[0].value.string_value == "not a location"
    assert out.data[1].value.string_value == "(1 N, 2 E)"


def test_location_with_typed_value_or_other_key_is_untouched() -> None:
    out = _transformed_v(
        payload(
            (vd.Location, {"location_value": {"latitude": 1.0, "longitude": 2.0}}),
            (vd.OriginLocation, {"string_value": "(1 N, 2 E)"}),
        )
    )
    assert out.data[0].value.location_value.latitude == 1.0
    assert out.data[1].value.string_value == "(1 N, 2 E)"


# -- scientific notation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.19e-05", "0.00001"),  # spec example
        ("1.23e-9", "0.00000"),  # spec example
        ("1e5", None),  # no decimal point: does not match
        ("-2.5E+3", "-2500.00000"),
        ("+.5e1", "5.00000"),
        ("5.e1", "50.00000"),
        ("0.1e0", "0.10000"),
        ("16777217.0e0", "16777216.00000"),  # float32 rounding, as Go's ParseFloat(…, 32)
        ("1.5e-05\n", None),  # Go's $ does not accept a trailing newline
        ("1.0e400", None),  # out of float32 range: Go leaves the string alone
        ("3.5e38", None),
        ("12.5", None),
        ("abc", None),
        ("١.٥e٣", None),  # non-ASCII digits do not match Go's \d
    ],
)
def test_rewrite_scientific(text: str, expected: str | None) -> None:
    assert rewrite_scientific(text) == expected


def test_scientific_rewrite_applies_to_every_string_datum() -> None:
    out = _transformed_v(
        payload(
            (vd.PackCurrent, {"string_value": "1.19e-05"}),
            (vd.PackVoltage, {"string_value": "3.9e2"}),
            (vd.VehicleName, {"string_value": "1e5"}),
            (vd.Soc, {"double_value": 1.19e-05}),
        )
    )
    assert [d.value.WhichOneof("value") for d in out.data] == [
        "string_value",
        "string_value",
        "string_value",
        "double_value",
    ]
    assert [out.data[i].value.string_value for i in range(3)] == ["0.00001", "390.00000", "1e5"]


# -- alerts, errors, connectivity ---------------------------------------------------------


def test_alert_milliseconds_become_seconds() -> None:
    alerts = va.VehicleAlerts(vin="x")
    a = alerts.alerts.add(name="A")
    a.started_at.seconds = 1692044886337  # spec example: ms sent in the seconds field
    b = alerts.alerts.add(name="B")
    b.started_at.seconds = 1692044886
    b.started_at.nanos = 5
    b.ended_at.seconds = MAX_SECONDS  # the threshold itself counts as milliseconds
    alerts.alerts.add(name="C")  # no timestamps at all
    _, raw = transform_payload("alerts", alerts.SerializeToString(), "VIN1")
    out = va.VehicleAlerts.FromString(raw)
    assert out.vin == "VIN1"
    assert (out.alerts[0].started_at.seconds, out.alerts[0].started_at.nanos) == (
        1692044886,
        337_000_000,
    )
    assert out.alerts[0].started_at.seconds + out.alerts[0].started_at.nanos / 1e9 == (
        pytest.approx(1692044886.337)
    )
    assert not out.alerts[0].HasField("ended_at")
    assert (out.alerts[1].started_at.seconds, out.alerts[1].started_at.nanos) == (1692044886, 5)
    assert out.alerts[1].ended_at.seconds == MAX_SECONDS // 1000
    assert not out.alerts[2].HasField("started_at")


def test_errors_and_connectivity_get_the_certificate_vin() -> None:
    errors = ve.VehicleErrors(vin="spoof")
    errors.errors.add(name="E", body="b").tags["k"] = "v"
    _, raw = transform_payload("errors", errors.SerializeToString(), "VIN1")
    out = ve.VehicleErrors.FromString(raw)
    assert out.vin == "VIN1"
    assert dict(out.errors[0].tags) == {"k": "v"}
    conn = vc.VehicleConnectivity(vin="spoof", connection_id="c", status=vc.CONNECTED)
    _, raw = transform_payload("connectivity", conn.SerializeToString(), "VIN1")
    assert vc.VehicleConnectivity.FromString(raw) == vc.VehicleConnectivity(
        vin="VIN1", connection_id="c", status=vc.CONNECTED
    )


def test_unknown_topic_bytes_are_forwarded_untouched() -> None:
    blob = b"\xff\x00not protobuf"
    assert transform_payload("metrics", blob, "VIN1") == (None, blob)


@pytest.mark.parametrize("topic", ["V", "alerts", "errors", "connectivity"])
def test_undecodable_payload_is_payload_error(topic: str) -> None:
    with pytest.raises(PayloadError):
        transform_payload(topic, b"\x0a\xff\xff\xff", "VIN1")


def test_invalid_utf8_string_is_payload_error() -> None:
    with pytest.raises(PayloadError):
        transform_payload("V", b"\x1a\x02\xff\xfe", "VIN1")  # vin = invalid UTF-8


# -- forward compatibility ----------------------------------------------------------------


def test_unknown_field_numbers_and_value_members_survive() -> None:
    # Datum{key: 300 (newer firmware), value: Value{field 60: "new"}} + Payload field 9.
    unknown_value = b"\xe2\x03\x03new"  # tag (60 << 3 | 2), length 3
    datum = b"\x08\xac\x02" + b"\x12" + bytes([len(unknown_value)]) + unknown_value
    raw = b"\x0a" + bytes([len(datum)]) + datum + b"\x48\x01"  # field 9 varint 1
    message, out = transform_payload("V", raw, "VIN1")
    assert isinstance(message, vd.Payload)
    assert message.data[0].key == 300
    assert message.data[0].value.WhichOneof("value") is None
    assert unknown_value in out
    assert b"\x48\x01" in out
    again = vd.Payload.FromString(out)
    assert again.data[0].key == 300
    assert again.vin == "VIN1"


_values = st.one_of(
    st.builds(lambda s: {"string_value": s}, st.text(max_size=20)),
    st.builds(lambda i: {"int_value": i}, st.integers(-(2**31), 2**31 - 1)),
    st.builds(lambda i: {"long_value": i}, st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda f: {"double_value": f}, st.floats(allow_nan=False)),
    st.builds(lambda b: {"boolean_value": b}, st.booleans()),
    st.builds(lambda n: {"shift_state_value": n}, st.integers(0, 10)),
    st.just({"invalid": True}),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), _values), max_size=8), st.text(max_size=17))
def test_transform_keeps_every_datum(data: list[tuple[int, dict[str, object]]], vin: str) -> None:
    message = payload(*data)
    out = _transformed_v(message, vin)
    assert out.vin == vin
    assert [d.key for d in out.data] == [d.key for d in message.data]


# -- the single pass against the reference's two loops ------------------------------------


@settings(max_examples=400, deadline=None)
@given(oracle.v_payloads(), st.text(max_size=8))
def test_single_pass_transform_equals_the_two_loops(message: vd.Payload, vin: str) -> None:
    expected = vd.Payload()
    expected.CopyFrom(message)
    oracle.transform_v(expected, vin)
    entries = transform_vehicle_data_entries(message, vin)
    assert message.SerializeToString() == expected.SerializeToString()
    assert [(key, which) for key, which, _ in entries] == [
        (d.key, d.value.WhichOneof("value")) for d in expected.data
    ]
    for (_, _, value), datum in zip(entries, message.data, strict=True):
        assert value == datum.value


def test_single_pass_location_then_scientific_on_the_same_datum() -> None:
    message = payload(
        (vd.Location, {"string_value": "1.5e1"}),  # not a location: rewritten as a number
        (vd.Location, {"string_value": "(1 N, 2 E)"}),  # second Location: left alone
        (vd.Soc, {"string_value": "2.5e0"}),
    )
    entries = transform_vehicle_data_entries(message, "V1")
    assert [which for _, which, _ in entries] == ["string_value"] * 3
    assert [d.value.string_value for d in message.data] == ["15.00000", "(1 N, 2 E)", "2.50000"]
