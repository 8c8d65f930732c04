"""The IO-name tables per device family and their conversions."""

from __future__ import annotations

import re

import pytest

from fleetgate.protocols.teltonika.io_names import (
    CUSTOM,
    IO_NAMES,
    IO_NAMES_BY_KEY,
    IO_TABLES,
    VARIABLE,
    io_key,
    io_table,
    named_value,
)


def spec(io_id: int, size: int):  # type: ignore[no-untyped-def]
    return IO_NAMES_BY_KEY[io_key(io_id, size)]


def test_table_is_well_formed() -> None:
    assert len(IO_NAMES_BY_KEY) == len(IO_NAMES)
    for entry in IO_NAMES:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", entry.name), entry.name
        assert entry.size in (VARIABLE, 1, 2, 4, 8), entry
        assert (entry.convert is not None) == (entry.mode == CUSTOM), entry
        assert entry.divisor >= 1


def test_brief_names_are_present() -> None:
    names = {(e.io_id, e.name) for e in IO_NAMES}
    for pair in [
        (239, "ignition"), (240, "movement"), (66, "external_voltage"), (67, "battery_voltage"),
        (16, "total_odometer"), (21, "gsm_signal"), (69, "gnss_status"), (1, "digital_input_1"),
        (179, "digital_output_1"), (181, "pdop"), (182, "hdop"), (24, "gnss_speed"),
        (17, "axis_x"), (72, "dallas_temperature_1"), (25, "ble_temperature_1"),
        (199, "trip_odometer"), (200, "sleep_mode"), (241, "gsm_operator"), (205, "gsm_cell_id"),
        (206, "gsm_area_code"), (113, "battery_level"), (68, "battery_current"),
        (9, "analog_input_1"), (78, "ibutton"), (256, "vin"), (325, "vin"), (281, "dtcs"),
    ]:
        assert pair in names


def test_io_key_separates_sizes() -> None:
    assert io_key(4, 1) != io_key(4, 4)
    assert io_key(1, 16) != io_key(2, 0)


@pytest.mark.parametrize(
    ("io_id", "size", "raw", "expected"),
    [
        (66, 2, 12458, 12.458),
        (181, 2, 19, 1.9),
        (17, 2, 0xFFE2, -30),
        (25, 2, 0xFB50, -12.0),
        (25, 2, 3000, None),  # "sensor not found"
        (72, 4, 0xFFFFFF38, -20.0),
        (72, 4, 850, None),
        (115, 2, 0xFFF6, -1.0),
        (239, 1, 1, True),
        (239, 1, 0, False),
        (239, 1, 3, None),
        (32, 1, 0xF6, -10),
        (241, 4, 24602, 24602),
        (78, 8, 0, None),
        (76, 8, 0x28FF000011112222, "28ff000011112222"),
        (256, VARIABLE, b"WV1ZZZ\x00", "WV1ZZZ"),
        (256, VARIABLE, b"\xff\xfe", None),
        (281, VARIABLE, b"P0299,,P0675", ["P0299", "P0675"]),
    ],
)
def test_conversions(io_id: int, size: int, raw: int | bytes, expected: object) -> None:
    assert named_value(spec(io_id, size), raw) == expected


def test_fixed_size_spec_ignores_bytes() -> None:
    assert named_value(spec(66, 2), b"\x01\x02") is None


def test_tlv_honours_length_bytes() -> None:
    decode = spec(548, VARIABLE).convert
    assert decode is not None
    # temperature parameter with 3 bytes (1 excess), then an unknown parameter 99
    value = b"\x01" + bytes([7]) + b"\x06\x03\x01\x2c\xff" + b"\x63\x00"
    assert decode(value) == [{"io": 548, "temperature": 3.0, "param_99": ""}]
    # temperature parameter too short: skipped
    assert decode(b"\x01\x03\x06\x01\x01") == [{"io": 548}]
    # a parameter running past its sensor: the whole list is refused
    assert decode(b"\x01\x03\x06\x05\x01") is None
    assert decode(b"\x01\x09\x00") is None
    assert decode(b"") is None


def test_eddystone_beacon_with_battery_and_temperature() -> None:
    decode = spec(385, VARIABLE).convert
    assert decode is not None
    value = b"\x11" + b"\x06" + bytes(range(16)) + b"\xc4" + b"\x0b\xb8" + b"\x00\x19"
    assert decode(value) == [{
        "io": 385, "flags": 6, "namespace": bytes(range(10)).hex(),
        "instance": bytes(range(10, 16)).hex(), "rssi": -60, "battery": 3000, "temperature": 25,
    }]
    assert decode(value[:-1]) is None


# -- families ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family"),
    [
        (None, "fmb"), ("", "fmb"), ("fmb", "fmb"), ("FMC", "fmb"), ("fmt", "fmb"),
        ("FMB130", "fmb"), ("fmc130", "fmb"), ("FMT100", "fmb"), ("FMM130", "fmb"),
        ("TMT250", "fmb"), ("TAT100", "fmb"), ("MTB100", "fmb"), (" FMB920 ", "fmb"),
        ("FMB640", "fm6"), ("FMC650", "fm6"), ("FMB630", "fm6"), ("fm6", "fm6"),
        ("GH3000", "gh"), ("gh5200", "gh"), ("gh", "gh"),
    ],
)
def test_io_table_by_family_or_model(name: str | None, family: str) -> None:
    assert io_table(name).family == family
    assert io_table(name) is IO_TABLES[family]


@pytest.mark.parametrize("name", ["FM6300", "FMB13", "XYZ", "fmx", "FMB1300"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="no Teltonika IO table"):
        io_table(name)


def test_every_table_is_well_formed() -> None:
    for table in IO_TABLES.values():
        assert len(table.by_key) == len(table.names)
        assert repr(table).startswith(f"IoTable('{table.family}'")
        for entry in table.names:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", entry.name), entry.name
            assert entry.size in (VARIABLE, 1, 2, 4, 8)
        names = [e.name for e in table.names]
        # one name per meaning: a name used twice must be the same id at two sizes or a
        # list collected from several ids
        for name in set(names):
            ids = {e.io_id for e in table.names if e.name == name}
            assert len(ids) == 1 or name in {"vin", "eye_sensors"}, name


def test_fm6_differs_where_the_spec_says() -> None:
    fmb, fm6 = io_table("FMB130"), io_table("FMB640")
    assert fmb.by_key.get(io_key(84, 2)) is not None  # CAN fuel level: FMB only
    assert fm6.by_key.get(io_key(84, 2)) is None
    assert fm6.by_key[io_key(10, 2)].name == "analog_input_2"
    assert fmb.by_key.get(io_key(10, 2)) is None
    assert named_value(fm6.by_key[io_key(701, 2)], 0xFB50) == -12.0
    assert fmb.by_key.get(io_key(701, 2)) is None
    assert fm6.by_key[io_key(239, 1)].name == "ignition"


def test_gh_table() -> None:
    gh = io_table("GH3000")
    assert named_value(gh.by_key[io_key(21, 2)], 10) == 1.0  # VDOP, not GSM signal
    assert gh.by_key[io_key(21, 2)].name == "vdop"
    assert named_value(gh.by_key[io_key(222, 1)], 1) is True
    assert gh.by_key.get(io_key(239, 1)) is None


def test_beacon_ids_are_split_by_length() -> None:
    decode = spec(548, VARIABLE).convert
    assert decode is not None
    ibeacon = bytes(range(16)) + b"\x00\x0b\x00\x0c"
    value = b"\x01" + bytes([22]) + b"\x01\x14" + ibeacon
    assert decode(value) == [{"io": 548, "id": ibeacon.hex(), "ibeacon": {
        "uuid": bytes(range(16)).hex(), "major": 11, "minor": 12}}]
    eddystone = bytes(range(16))
    value = b"\x01" + bytes([18]) + b"\x01\x10" + eddystone
    assert decode(value) == [{"io": 548, "id": eddystone.hex(), "eddystone": {
        "namespace": bytes(range(10)).hex(), "instance": bytes(range(10, 16)).hex()}}]
