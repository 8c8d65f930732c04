"""The byte reader of ``V`` data against the upb path it stands in for."""

from __future__ import annotations

import math
import random
from typing import Any

from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.tesla.natural import transform_vehicle_data_natural
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.protocols.tesla.vwire import read_vehicle_data, read_vehicle_payload, vin_field
from fleetgate.sim.tesla import VehicleModel
from tests.unit.tesla import oracle
from tests.unit.tesla.helpers import VIN, payload


def _through_upb(raw: bytes) -> tuple[Any, bytes, int]:
    """(typed data without is_resend, transformed bytes, datum count) the upb path makes."""
    message = vd.Payload.FromString(raw)
    data = transform_vehicle_data_natural(message, VIN)
    data.pop("is_resend", None)
    return oracle.typed(data), message.SerializeToString(), len(message.data)


def _spliced_agrees(raw: bytes) -> bool:
    """read_vehicle_payload gives up, or gives what the upb path gives: the same data,
    created_at and is_resend, and the same payload bytes with the VIN set."""
    fast = read_vehicle_payload(raw, vin_field(VIN))
    try:
        message = vd.Payload.FromString(raw)
    except DecodeError:
        assert fast is None  # upb refuses it: so does the byte path
        return False
    if fast is None:
        return False
    data, signals, created, is_resend, spliced = fast
    read = read_vehicle_data(raw)
    assert read is not None and (oracle.typed(data), signals) == (oracle.typed(read[0]), read[1])
    assert is_resend == message.is_resend
    assert created == (
        (message.created_at.seconds, message.created_at.nanos)
        if message.HasField("created_at") else None
    )
    message.vin = VIN
    assert spliced == message.SerializeToString()
    return True


def _agrees(raw: bytes) -> bool:
    """The reader either gives up or gives what upb gives, on a payload that upb leaves
    alone but for the VIN; returns whether it read the payload."""
    _spliced_agrees(raw)
    try:
        expected, transformed, count = _through_upb(raw)
    except DecodeError:
        return False  # never reaches the reader: the frame is refused first
    read = read_vehicle_data(raw)
    if read is None:
        return False
    data, signals = read
    assert oracle.typed(data) == expected
    assert signals == count
    untouched = vd.Payload.FromString(raw)
    untouched.vin = VIN
    assert untouched.SerializeToString() == transformed  # nothing but the VIN changed
    return True


def _simulated(seed: int) -> bytes:
    return VehicleModel("5YJ3E1EA7KF000001", random.Random(seed)).payload(1.7e9)


def test_the_simulators_payloads_are_read() -> None:
    for seed in range(20):
        assert _agrees(_simulated(seed))


def test_the_simulators_payloads_take_the_byte_path_with_the_vin_spliced_in() -> None:
    for seed in range(20):
        assert _spliced_agrees(_simulated(seed))
    resent = vd.Payload.FromString(_simulated(1))
    resent.is_resend = True
    resent.vin = "another VIN, replaced"
    assert _spliced_agrees(resent.SerializeToString())
    assert _spliced_agrees(b"")  # no data at all
    for vin in ("", "V" * 200):  # no vin field; a length of two bytes
        fast = read_vehicle_payload(_simulated(2), vin_field(vin))
        assert fast is not None
        message = vd.Payload.FromString(_simulated(2))
        message.vin = vin
        assert fast[4] == message.SerializeToString()


def test_payloads_upb_would_write_otherwise_take_the_upb_path() -> None:
    def one(*fields: str) -> bytes:
        return bytes.fromhex("".join(fields))

    double = "0a0d" "0805" "1209" "29" "0000000000002940"
    for raw in (
        one("0a0d" "0800" "1209" "29" "0000000000002940"),  # a key of 0 written
        one("0a0e" "088500" "1209" "29" "0000000000002940"),  # a key varint too long
        one("0a0f" "0805" "120b" "3a09" "09" "0000000000000000"),  # latitude 0 written
        one("0a06" "0805" "1202" "3002"),  # a bool written as 2
        one("0a0a" "0805" "1206" "10ffffffff0f"),  # int32 -1 in 5 bytes, not 10
        one("0a08" "0805" "1204" "10ac8200"),  # int 300 in 3 bytes, not 2
        one(double, "2000"),  # is_resend false written
        one(double, "2001", "1206089cf1d6ca06"),  # created_at after is_resend
        one(double, "1a0141", "1a0142"),  # vin twice
        one(double, "1a02c328"),  # a vin that is not UTF-8: upb refuses it
        one(double, "2a0178"),  # an unknown field
        one("1206089cf1d6ca06", double),  # data after created_at
        one(double, "12020800"),  # seconds 0 written
        one("0a0e" "0805" "1209" "29" "0000000000002940"),  # a datum past the end
    ):
        assert read_vehicle_payload(raw, vin_field(VIN)) is None, raw.hex()
        _agrees(raw)


def test_typed_payloads_of_every_simple_kind_are_read() -> None:
    message = payload(
        (int(vd.VehicleSpeed), {"double_value": 12.5}),
        (int(vd.Soc), {"float_value": 0.1}),
        (int(vd.Odometer), {"int_value": -7}),
        (int(vd.EstBatteryRange), {"long_value": -(2**40)}),
        (int(vd.Locked), {"boolean_value": True}),
        (int(vd.Gear), {"shift_state_value": vd.ShiftStateR}),
        (int(vd.ChargeState), {"invalid": True}),
        (int(vd.Location), {"location_value": {"latitude": 1.5}}),
        (int(vd.Location), {"location_value": {"longitude": -2.5}}),
        (int(vd.VehicleName), {"string_value": "1e5"}),
        (int(vd.Version), {}),
        (500, {"double_value": float("nan")}),
        created_at=1_700_000_000,
        vin="sent",
    )
    assert _agrees(message.SerializeToString())


def test_what_upb_must_rewrite_or_render_is_left_to_it() -> None:
    for member in (
        {"string_value": "1.19e-05"},  # scientific notation: rewritten
        {"door_value": {"DriverFront": True}},  # a message member other than location
        {"time_value": {"hour": 1}},
    ):
        raw = payload((int(vd.VehicleSpeed), member)).SerializeToString()
        assert read_vehicle_data(raw) is None
    text_location = payload((int(vd.Location), {"string_value": "(1.0 N, 2.0 E)"}))
    assert read_vehicle_data(text_location.SerializeToString()) is None
    # Only the first Location datum is parsed: a second one spelled as text stays a string.
    second = payload(
        (int(vd.Location), {"location_value": {"latitude": 1.0}}),
        (int(vd.Location), {"string_value": "(1.0 N, 2.0 E)"}),
    )
    assert _agrees(second.SerializeToString())


def test_unusual_layouts_are_left_to_upb() -> None:
    datum_value_first = bytes.fromhex("0a07" "1203" "290000" "0805")[:9]  # value, then key
    for raw in (
        bytes.fromhex("0a0c" "120a" "290000000000000000" "00"),  # no key
        bytes.fromhex("0a04" "0805" "0805"),  # key twice
        bytes.fromhex("0a0d" "0805" "1209" "300129000000000000"),  # two members... cut
        bytes.fromhex("0a0e" "0805" "120a" "0a012e" "0a0132" "0000"),
        datum_value_first,
    ):
        _agrees(raw)  # whatever it decides, never a different answer


@settings(max_examples=500, deadline=None)
@given(oracle.v_payloads())
def test_generated_payloads_read_like_upb(message: vd.Payload) -> None:
    _agrees(message.SerializeToString())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_changed_bytes_read_like_upb(data: st.DataObject) -> None:
    raw = bytearray(_simulated(data.draw(st.integers(0, 5))))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    _agrees(bytes(raw))


def test_every_one_byte_change_of_a_real_payload_reads_like_upb() -> None:
    raw = _simulated(1)
    read = 0
    for at in range(len(raw)):
        for byte in (0x00, 0x01, 0x08, 0x09, 0x0A, 0x11, 0x12, 0x7F, 0x80, 0xFF, raw[at] ^ 0x40):
            changed = bytearray(raw)
            changed[at] = byte
            read += _agrees(bytes(changed))
    assert read  # some changes still read (values, keys), so the comparison ran


def _short_datums() -> bytes:
    """A payload of short datums (one-byte key, one-member Value under 128 bytes): one of
    every one-byte varint kind, enums of one-byte and two-byte member tags, a float, and
    strings the natural form reads as numbers, booleans or text."""
    message = payload(
        (int(vd.VehicleSpeed), {"string_value": "13.9"}),
        (int(vd.Soc), {"float_value": 0.5}),
        (int(vd.Odometer), {"int_value": 7}),
        (int(vd.EstBatteryRange), {"long_value": 0}),
        (int(vd.Locked), {"boolean_value": True}),
        (int(vd.SentryMode), {"boolean_value": False}),
        (int(vd.Gear), {"shift_state_value": vd.ShiftStateD}),
        (int(vd.ChargeState), {"charging_value": 2}),
        (int(vd.DetailedChargeState), {"detailed_charge_state_value": 99}),  # a long key
        (100, {"detailed_charge_state_value": 4}),  # a member tag of two bytes
        (int(vd.Version), {"string_value": "2024.8"}),
        (int(vd.VehicleName), {"string_value": ""}),
        (int(vd.FastChargerPresent), {"string_value": "true"}),
        (int(vd.InsideTemp), {"string_value": "x" * 100}),
        created_at=1_700_000_000,
    )
    return message.SerializeToString()


def test_short_datums_of_every_kind_are_read() -> None:
    raw = _short_datums()
    assert _agrees(raw)
    assert _spliced_agrees(raw)
    # Lengths that need a two-byte varint take the general path, with the same answer.
    longer = vd.Payload.FromString(raw)
    longer.data.add(key=vd.Version).value.string_value = "y" * 200  # type: ignore[arg-type]
    assert _agrees(longer.SerializeToString())


def test_every_one_byte_change_of_short_datums_reads_like_upb() -> None:
    raw = _short_datums()
    read = 0
    for at in range(len(raw)):
        for byte in (0x00, 0x01, 0x02, 0x06, 0x08, 0x0A, 0x12, 0x25, 0x7F, 0x80, 0x81, 0xFF):
            changed = bytearray(raw)
            changed[at] = byte
            read += _agrees(bytes(changed))
    assert read  # some changes still read, so the comparison ran


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(oracle.keys.filter(lambda key: 0 < key < 0x80),
                          oracle.values()), max_size=8))
def test_generated_short_datums_read_like_upb(datums: list[tuple[int, vd.Value]]) -> None:
    message = vd.Payload()
    for key, value in datums:
        message.data.add(key=key, value=value)  # type: ignore[arg-type]
    _agrees(message.SerializeToString())


# Keys around the one-byte datums' edges: 0 (upb leaves it out), 1 to 127, two-byte keys.
_EDGE_KEYS = st.one_of(st.just(int(vd.Location)), st.sampled_from([0, 1, 0x7F, 0x80, 300]),
                       st.integers(0, 200))
# Edges drawn often: hypothesis draws NaN and the infinities only now and then.
_DOUBLES = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def _usual_datum(draw: st.DrawFn) -> tuple[int, vd.Value]:
    """A double or location datum (the one-read layouts), or a Location spelled as text."""
    value = vd.Value()
    kind = draw(st.sampled_from(["double", "location", "text"]))
    if kind == "double":
        value.double_value = draw(_DOUBLES)
    elif kind == "location":
        value.location_value.latitude = draw(st.one_of(st.just(0.0), st.just(-0.0), _DOUBLES))
        value.location_value.longitude = draw(st.one_of(st.just(0.0), _DOUBLES))
    else:
        value.string_value = draw(st.sampled_from(["(37.4 N, 122.1 W)", "13.9", ""]))
    return draw(_EDGE_KEYS), value


@settings(max_examples=400, deadline=None)
@given(st.lists(_usual_datum(), max_size=10), st.booleans())
def test_runs_of_double_and_location_datums_read_like_upb(
    datums: list[tuple[int, vd.Value]], with_time: bool
) -> None:
    """The layouts named by their bytes (_DOUBLE_HEADS, _LOCATION_HEADS): repeated keys,
    keys of 0 and of two bytes, NaN, infinities, zero coordinates, and a text Location
    before or after a typed one."""
    message = vd.Payload()
    for key, value in datums:
        message.data.add(key=key, value=value)  # type: ignore[arg-type]
    if with_time:
        message.created_at.seconds = 1_767_225_500
    raw = message.SerializeToString()
    read = _agrees(raw)
    usual = all(
        0 < key < 0x80 and value.WhichOneof("value") == "double_value" for key, value in datums
    )
    assert read or not usual  # doubles of one-byte keys alone are always read
