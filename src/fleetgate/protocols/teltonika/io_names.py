"""Names, sizes and scaling of Teltonika IO elements, one table per device family.

Each table is data, built once at import. An entry says which IO id, at which *wire size*,
means what: a named value is produced only when the element arrived with exactly that size
(and, for flags, a 0/1 value), so a device of another family, whose id means something
else at another width, never yields a wrong named value. The raw value is always kept
under ``io`` by the record builder, named or not.

Families (:func:`io_table` takes a family or a model name):

==========  =======================================================  =====================
family      models                                                   table
==========  =======================================================  =====================
``fmb``     FMB/FMC/FMT/FMM/FMU…, MTB100, MSP500, TAT/TMT/TFT/TST    common table (default)
``fm6``     FM?6?? (FMB640, FMC640, FMM640, FMB630, FMC650)          common, minus the CAN
                                                                     ids 80–89, id 10 =
                                                                     analog input 2,
                                                                     BLE temperatures 701–704
``gh``      GH3000, GH4000, GH5200 … (always for codec 7)            spec section 6
==========  =======================================================  =====================

Units after conversion: volts, amperes, degrees Celsius, litres, metres, km/h, percent.
Known sensor error codes (Dallas 850/2000/3000/4000/5000, BLE 2000/3000/4000 raw) give
no named value.

Variable-length (NX, codec 8E) elements are keyed with size ``0``; beacon and EYE-sensor
lists (ids 385, 548, 10828, 10829, 10831, 11317) are decoded to lists of dicts per
spec 5.3 (a beacon id of 20 bytes is split into iBeacon UUID/major/minor, one of 16 bytes
into Eddystone namespace/instance); a list that does not parse cleanly is not named.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

# Conversion modes (small ints so the record builder can branch inline on the hot path).
RAW: Final = 0  # unsigned integer as transmitted
FLAG: Final = 1  # 0/1 -> bool; any other value -> not named
SIGNED: Final = 2  # two's complement of the element's size
SCALED: Final = 3  # unsigned / divisor -> float
SIGNED_SCALED: Final = 4  # signed / divisor -> float
CUSTOM: Final = 5  # bytes or odd integers: IoName.convert

VARIABLE: Final = 0  # "size" of an NX element


@dataclass(frozen=True, slots=True)
class IoName:
    """What one IO id means at one wire size."""

    io_id: int
    name: str
    size: int  # bytes on the wire; VARIABLE (0) for NX elements
    mode: int = RAW
    divisor: int = 1
    unit: str = ""
    invalid: frozenset[int] = frozenset()  # raw values that are error codes, not readings
    # For CUSTOM: raw value (int or bytes) -> JSON value, or None for "do not name it".
    convert: Callable[[Any], Any] | None = None


def io_key(io_id: int, size: int) -> int:
    """Lookup key of (id, wire size) in :data:`IO_NAMES_BY_KEY`; one int, no tuple."""
    return (io_id << 5) | size


# -- converters for the CUSTOM entries --------------------------------------------------------


def _ascii(value: bytes) -> str | None:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    text = text.strip("\x00 \r\n\t")
    # An all-NUL VIN (seen in Teltonika's own example) means "not read yet".
    return text if text and text.isprintable() else None


def _ascii_list(value: bytes) -> list[str] | None:
    text = _ascii(value)
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _ibutton(value: int) -> str | None:
    # iButton key id: the 8 bytes read little-endian, as Traccar's driverUniqueId;
    # 0 means "no key".
    return value.to_bytes(8, "little").hex() if value else None


def _hex8(value: int) -> str:
    return value.to_bytes(8, "big").hex()


def _i8(b: int) -> int:
    return b - 256 if b > 127 else b


def _beacon_list(value: bytes) -> list[dict[str, Any]] | None:
    """IO 385 (spec 5.3): data-part byte, then [flags, iBeacon|Eddystone id, RSSI, extras]."""
    if len(value) < 1:
        return None
    beacons: list[dict[str, Any]] = []
    pos = 1
    end = len(value)
    while pos < end:
        flags = value[pos]
        pos += 1
        beacon: dict[str, Any] = {"io": 385, "flags": flags}
        if flags >> 4:
            if pos + 20 > end:
                return None
            beacon["uuid"] = value[pos : pos + 16].hex()
            beacon["major"] = int.from_bytes(value[pos + 16 : pos + 18], "big")
            beacon["minor"] = int.from_bytes(value[pos + 18 : pos + 20], "big")
            pos += 20
        else:
            if pos + 16 > end:
                return None
            beacon["namespace"] = value[pos : pos + 10].hex()
            beacon["instance"] = value[pos + 10 : pos + 16].hex()
            pos += 16
        if pos >= end:
            return None
        beacon["rssi"] = _i8(value[pos])
        pos += 1
        for bit, key in ((0x02, "battery"), (0x04, "temperature")):
            if flags & bit:
                if pos + 2 > end:
                    return None
                beacon[key] = int.from_bytes(value[pos : pos + 2], "big")
                pos += 2
        beacons.append(beacon)
    return beacons


def _beacon_id(value: bytes) -> dict[str, Any]:
    """A beacon id's structure when its length says it: iBeacon (20) or Eddystone (16)."""
    if len(value) == 20:
        return {
            "ibeacon": {
                "uuid": value[:16].hex(),
                "major": int.from_bytes(value[16:18], "big"),
                "minor": int.from_bytes(value[18:20], "big"),
            }
        }
    if len(value) == 16:
        return {"eddystone": {"namespace": value[:10].hex(), "instance": value[10:].hex()}}
    return {}


# TLV parameter id -> (key, fixed width or 0 for "whole value", decoder).
_TLV: Final[dict[int, tuple[str, int, Callable[[bytes], Any]]]] = {
    0: ("rssi", 1, lambda b: _i8(b[0])),
    1: ("id", 0, bytes.hex),
    5: ("name", 0, lambda b: b.decode("utf-8", "replace").strip("\x00 ")),
    6: ("temperature", 2, lambda b: int.from_bytes(b, "big", signed=True) / 100),
    7: ("humidity", 1, lambda b: b[0]),
    8: ("magnet", 1, lambda b: b[0]),
    9: ("movement", 1, lambda b: b[0]),
    10: ("movement_count", 2, lambda b: int.from_bytes(b, "big")),
    11: ("pitch", 1, lambda b: _i8(b[0])),
    12: ("roll", 2, lambda b: int.from_bytes(b, "big", signed=True)),
    13: ("low_battery", 1, lambda b: bool(b[0])),
    14: ("battery_mv", 2, lambda b: int.from_bytes(b, "big")),
    15: ("mac", 0, bytes.hex),
}


def _tlv_sensor_list(io_id: int) -> Callable[[bytes], list[dict[str, Any]] | None]:
    """IOs 548/10828/10829/10831/11317 (spec 5.3): header byte, then length-prefixed TLVs."""

    def decode(value: bytes) -> list[dict[str, Any]] | None:
        if len(value) < 1:
            return None
        sensors: list[dict[str, Any]] = []
        pos = 1
        end = len(value)
        while pos < end:
            stop = pos + 1 + value[pos]
            if stop > end:
                return None
            pos += 1
            sensor: dict[str, Any] = {"io": io_id}
            while pos < stop:
                if pos + 2 > stop:
                    return None
                param, length = value[pos], value[pos + 1]
                data = value[pos + 2 : pos + 2 + length]
                pos += 2 + length
                if pos > stop:
                    return None
                if param == 2:
                    # Flags: bit 6 low battery; bit 7 -> next byte b, voltage b*10+2000 mV.
                    if not data:
                        continue
                    sensor["flags"] = data[0]
                    sensor["low_battery"] = bool(data[0] & 0x40)
                    if data[0] & 0x80 and len(data) >= 2:
                        sensor["voltage_mv"] = data[1] * 10 + 2000
                    continue
                spec = _TLV.get(param)
                if spec is None:
                    sensor[f"param_{param}"] = data.hex()
                    continue
                key, width, conv = spec
                if width:
                    # Honour the length byte: too short -> skip; longer -> ignore excess.
                    if len(data) < width:
                        continue
                    data = data[:width]
                sensor[key] = conv(data)
                if param == 1:
                    sensor.update(_beacon_id(data))
            sensors.append(sensor)
        return sensors

    return decode


# -- the table ------------------------------------------------------------------------------

_DALLAS_ERRORS: Final = frozenset({850, 2000, 3000, 4000, 5000})
_BLE_TEMP_ERRORS: Final = frozenset({2000, 3000, 4000})


def _entries() -> list[IoName]:
    e = IoName
    rows = [
        e(1, "digital_input_1", 1, FLAG),
        e(2, "digital_input_2", 1, FLAG),
        e(3, "digital_input_3", 1, FLAG),
        e(4, "digital_input_4", 1, FLAG),  # FM36 family
        e(4, "pulse_counter_din1", 4),  # FMB family
        e(5, "pulse_counter_din2", 4),
        e(6, "analog_input_2", 2, SCALED, 1000, "V"),
        e(7, "records_in_flash", 2),
        e(9, "analog_input_1", 2, SCALED, 1000, "V"),
        e(10, "sd_status", 1),  # FMB1xx; the 2-byte id 10 of FM36/FMB640 is left raw
        e(11, "iccid_part_1", 8),
        e(12, "fuel_used_gps", 4, SCALED, 1000, "l"),
        e(13, "fuel_rate_gps", 2, SCALED, 100, "l/100km"),
        e(14, "iccid_part_2", 8),
        e(15, "eco_score", 2, SCALED, 100),
        e(16, "total_odometer", 4, RAW, 1, "m"),
        e(17, "axis_x", 2, SIGNED, 1, "mG"),
        e(18, "axis_y", 2, SIGNED, 1, "mG"),
        e(19, "axis_z", 2, SIGNED, 1, "mG"),
        e(21, "gsm_signal", 1),
        e(24, "gnss_speed", 2, RAW, 1, "km/h"),
        e(29, "ble_battery_1", 1, RAW, 1, "%"),
        e(30, "dtc_count", 1),
        e(31, "engine_load", 1, RAW, 1, "%"),
        e(32, "coolant_temperature", 1, SIGNED, 1, "°C"),
        e(36, "engine_rpm", 2, RAW, 1, "rpm"),
        e(37, "obd_vehicle_speed", 1, RAW, 1, "km/h"),
        e(41, "throttle_position", 1, RAW, 1, "%"),
        e(43, "distance_traveled_mil_on", 2, RAW, 1, "km"),
        e(48, "obd_fuel_level", 1, RAW, 1, "%"),
        e(57, "hybrid_battery_pack_life", 1, RAW, 1, "%"),
        e(66, "external_voltage", 2, SCALED, 1000, "V"),
        e(67, "battery_voltage", 2, SCALED, 1000, "V"),
        e(68, "battery_current", 2, SCALED, 1000, "A"),
        e(69, "gnss_status", 1),
        e(80, "data_mode", 1),
        e(81, "can_vehicle_speed", 1, RAW, 1, "km/h"),
        e(82, "accelerator_pedal_position", 1, RAW, 1, "%"),
        e(83, "can_fuel_consumed", 4, SCALED, 10, "l"),
        e(84, "can_fuel_level", 2, SCALED, 10, "l"),
        e(85, "can_engine_rpm", 2, RAW, 1, "rpm"),
        e(87, "can_total_mileage", 4, RAW, 1, "m"),
        e(89, "can_fuel_level_percent", 1, RAW, 1, "%"),
        e(107, "fuel_consumed_counted", 4, SCALED, 10, "l"),
        e(110, "fuel_rate", 2, SCALED, 10, "l/h"),
        e(113, "battery_level", 1, RAW, 1, "%"),
        e(115, "engine_temperature", 2, SIGNED_SCALED, 10, "°C"),
        e(175, "auto_geofence", 1),
        e(179, "digital_output_1", 1, FLAG),
        e(180, "digital_output_2", 1, FLAG),
        e(181, "pdop", 2, SCALED, 10),
        e(182, "hdop", 2, SCALED, 10),
        e(199, "trip_odometer", 4, RAW, 1, "m"),
        e(200, "sleep_mode", 1),
        e(205, "gsm_cell_id", 2),
        e(206, "gsm_area_code", 2),
        e(236, "alarm", 1, FLAG),
        e(237, "network_type", 1),
        e(239, "ignition", 1, FLAG),
        e(240, "movement", 1, FLAG),
        e(241, "gsm_operator", 4),
        e(246, "towing", 1, FLAG),
        e(247, "crash_detection", 1),
        e(248, "immobilizer", 1),
        e(249, "jamming", 1, FLAG),
        e(250, "trip", 1, FLAG),
        e(251, "idling", 1, FLAG),
        e(252, "unplug", 1, FLAG),
        e(253, "green_driving_type", 1),
        e(254, "green_driving_value", 1),
        e(255, "over_speeding", 1, RAW, 1, "km/h"),
        e(303, "instant_movement", 1, FLAG),
        e(636, "lte_cell_id", 4),
        e(78, "ibutton", 8, CUSTOM, convert=_ibutton),
        e(256, "vin", VARIABLE, CUSTOM, convert=_ascii),
        e(325, "vin", VARIABLE, CUSTOM, convert=_ascii),
        e(281, "dtcs", VARIABLE, CUSTOM, convert=_ascii_list),
        e(387, "iso6709_coordinates", VARIABLE, CUSTOM, convert=_ascii),
        e(385, "beacons", VARIABLE, CUSTOM, convert=_beacon_list),
        e(548, "ble_beacons", VARIABLE, CUSTOM, convert=_tlv_sensor_list(548)),
    ]
    for io_id in (10828, 10829, 10831, 11317):
        rows.append(e(io_id, "eye_sensors", VARIABLE, CUSTOM, convert=_tlv_sensor_list(io_id)))
    for n, io_id in enumerate((25, 26, 27, 28), start=1):
        rows.append(e(io_id, f"ble_temperature_{n}", 2, SIGNED_SCALED, 100, "°C", _BLE_TEMP_ERRORS))
    for n, io_id in enumerate((72, 73, 74, 75), start=1):
        rows.append(e(io_id, f"dallas_temperature_{n}", 4, SIGNED_SCALED, 10, "°C", _DALLAS_ERRORS))
    for n, io_id in enumerate((76, 77, 79, 71), start=1):
        rows.append(e(io_id, f"dallas_temperature_id_{n}", 8, CUSTOM, convert=_hex8))
    for n, io_id in enumerate((10800, 10801, 10802, 10803), start=1):
        rows.append(e(io_id, f"eye_temperature_{n}", 2, SIGNED_SCALED, 100, "°C"))
    for n, io_id in enumerate((10832, 10833, 10834, 10835), start=1):
        rows.append(e(io_id, f"eye_roll_{n}", 2, SIGNED, 1, "°"))
    return rows


def _gh_entries() -> list[IoName]:
    """GH3000-family IO ids (spec section 6; sizes as the GH frames send them)."""
    e = IoName
    return [
        e(1, "battery_level", 1, RAW, 1, "%"),
        e(2, "usb_connected", 1, FLAG),
        e(5, "uptime", 4, RAW, 1, "s"),
        e(20, "hdop", 2, SCALED, 10),
        e(21, "vdop", 2, SCALED, 10),
        e(22, "pdop", 2, SCALED, 10),
        e(67, "battery_voltage", 2, SCALED, 1000, "V"),
        e(221, "button", 1),
        e(222, "sos_alarm", 1, FLAG),
        e(240, "movement", 1, FLAG),
        e(244, "roaming", 1, FLAG),
    ]


# FMB ids that FM6 devices do not have (Traccar scopes them "FMB, not FM6"), and the
# ids whose FM6 meaning differs (replaced below).
_NOT_FM6: Final = frozenset({80, 81, 82, 83, 84, 85, 87, 89, 6, 10, 25, 26, 27, 28})


def _fm6_entries() -> list[IoName]:
    e = IoName
    rows = [n for n in _entries() if n.io_id not in _NOT_FM6]
    rows.append(e(10, "analog_input_2", 2, SCALED, 1000, "V"))
    for n, io_id in enumerate((701, 702, 703, 704), start=1):
        rows.append(e(io_id, f"ble_temperature_{n}", 2, SIGNED_SCALED, 100, "°C", _BLE_TEMP_ERRORS))
    return rows


class IoTable:
    """One device family's IO names, looked up by :func:`io_key` (id, wire size).

    ``plans`` is a cache the record builder fills (one entry per IO layout seen); it lives
    here so each family's layouts are cached separately.
    """

    __slots__ = ("by_key", "family", "names", "plans")

    def __init__(self, family: str, names: Iterable[IoName]) -> None:
        self.family = family
        self.names: tuple[IoName, ...] = tuple(names)
        self.by_key: dict[int, IoName] = {io_key(n.io_id, n.size): n for n in self.names}
        if len(self.by_key) != len(self.names):  # pragma: no cover - table typo guard
            raise RuntimeError(f"duplicate (id, size) in the Teltonika {family} IO table")
        self.plans: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"IoTable({self.family!r}, {len(self.names)} names)"


FMB_TABLE: Final = IoTable("fmb", _entries())
FM6_TABLE: Final = IoTable("fm6", _fm6_entries())
GH_TABLE: Final = IoTable("gh", _gh_entries())
DEFAULT_IO_TABLE: Final = FMB_TABLE
IO_TABLES: Final = {"fmb": FMB_TABLE, "fm6": FM6_TABLE, "gh": GH_TABLE}

# The common table, as plain data (kept for callers that need no family).
IO_NAMES: Final[tuple[IoName, ...]] = FMB_TABLE.names
IO_NAMES_BY_KEY: Final[dict[int, IoName]] = FMB_TABLE.by_key

_FAMILY_ALIASES: Final = {"fmc": "fmb", "fmt": "fmb", "fmm": "fmb", "fmu": "fmb", "fmp": "fmb"}
# Model name patterns (upper case, whole name) -> family, first match wins (spec 10).
_MODEL_FAMILIES: Final = (
    (re.compile(r"GH\d{4}[A-Z]*"), "gh"),
    (re.compile(r"FM[B-Z]6[0-9A-Z]{2}"), "fm6"),
    (re.compile(r"FM[B-Z][0-9A-Z]{3}"), "fmb"),
    (re.compile(r"T[A-Z]T\d{3}"), "fmb"),
    (re.compile(r"MTB100|MSP500"), "fmb"),
)


def io_table(name: str | None = None) -> IoTable:
    """The IO table for a family (``fmb``, ``fm6``, ``gh``) or a model (``FMB130``).

    None or "" gives the default (common FMB/FMC/FMT/FMM) table. Raises ValueError for a
    name that is neither a known family nor a model of one, so a typo in a configuration
    is reported instead of silently naming nothing.
    """
    if not name:
        return DEFAULT_IO_TABLE
    key = name.strip().lower()
    family = _FAMILY_ALIASES.get(key, key)
    if family in IO_TABLES:
        return IO_TABLES[family]
    model = name.strip().upper()
    for pattern, family in _MODEL_FAMILIES:
        if pattern.fullmatch(model):
            return IO_TABLES[family]
    raise ValueError(
        f"no Teltonika IO table for {name!r}: use a family ({', '.join(sorted(IO_TABLES))}) "
        "or a model such as FMB130, FMB640, TMT250, GH3000"
    )


# Names whose values are lists collected from several ids (one record may carry two lists).
LIST_NAMES: Final = frozenset({"beacons", "ble_beacons", "eye_sensors", "dtcs"})


def named_value(spec: IoName, value: int | bytes) -> Any:
    """The JSON value of ``value`` under ``spec``, or None when it must not be named."""
    mode = spec.mode
    if mode == CUSTOM:
        assert spec.convert is not None
        return spec.convert(value)
    if not isinstance(value, int):
        return None
    if value in spec.invalid:
        return None
    if mode == RAW:
        return value
    if mode == FLAG:
        return bool(value) if value <= 1 else None
    if mode in (SIGNED, SIGNED_SCALED):
        bits = spec.size * 8
        if value >= 1 << (bits - 1):
            value -= 1 << bits
        return value if mode == SIGNED else value / spec.divisor
    return value / spec.divisor
