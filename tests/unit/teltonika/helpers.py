"""Shared helpers for the Teltonika unit tests: the real frames and record invariants."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import cache
from typing import Any

import orjson

from fleetgate.protocols.teltonika.model import MAX_TIMESTAMP_MS, AvlRecord
from fleetgate.protocols.teltonika.records import BASE_KEYS, avl_record_data
from fleetgate.records import Record, parse_rfc3339_ms, record_json
from tests.teltonika_vectors import VECTORS_PATH

IMEI = "123456789012345"
IMEI_FRAME = b"\x00\x0f" + IMEI.encode()

# Traccar attribute names (vectors' traccar_named_any_model) -> our data keys.
TRACCAR_NAMES = {
    "ignition": "ignition",
    "motion": "movement",
    "rssi": "gsm_signal",
    "in1": "digital_input_1",
    "in2": "digital_input_2",
    "in3": "digital_input_3",
    "out1": "digital_output_1",
    "out2": "digital_output_2",
    "pdop": "pdop",
    "hdop": "hdop",
    "power": "external_voltage",
    "battery": "battery_voltage",
    "operator": "gsm_operator",
    "odometer": "total_odometer",
    "tripOdometer": "trip_odometer",
    "vin": "vin",
    # "in4" is Traccar reading the first byte of a 4-byte pulse counter (spec 10 QUIRK).
}


@cache
def all_vectors() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(VECTORS_PATH.read_text()))


def vector(vector_id: str) -> dict[str, Any]:
    for v in all_vectors():
        if v["id"] == vector_id:
            return v
    raise KeyError(vector_id)


def frame(vector_id: str) -> bytes:
    return bytes.fromhex(vector(vector_id)["hex"])


def select(
    *,
    transport: str = "tcp",
    direction: str = "device-to-server",
    codecs: tuple[int | None, ...],
    integrity_error: bool | None = None,
) -> list[dict[str, Any]]:
    out = []
    for v in all_vectors():
        if v["transport"] != transport or v["direction"] != direction:
            continue
        if v["codec"] not in codecs:
            continue
        bad = "integrity-error" in v["tags"]
        if integrity_error is not None and bad != integrity_error:
            continue
        out.append(v)
    return out


def io16(v: dict[str, Any]) -> bool:
    return bool((v.get("decoder_options") or {}).get("io16_group", False))


def io_json(io: dict[int, int | bytes]) -> dict[str, int | str]:
    return {str(k): (val.hex() if isinstance(val, bytes) else val) for k, val in io.items()}


def check_record_invariants(rec: AvlRecord) -> dict[str, Any]:
    """Traccar's ProtocolTest habit: every decoded record must pass these."""
    assert -90.0 <= rec.latitude <= 90.0
    assert -180.0 <= rec.longitude <= 180.0
    assert math.isfinite(rec.latitude)
    assert math.isfinite(rec.longitude)
    assert 0 <= rec.timestamp_ms <= MAX_TIMESTAMP_MS
    assert -32768 <= rec.altitude <= 0xFFFF
    assert 0 <= rec.angle < 0x10000
    assert 0 <= rec.speed <= 0xFFFF
    assert rec.io_groups is not None
    assert len(rec.io_groups) == 6
    for key, value in rec.io.items():
        assert 0 <= key <= 0xFFFF
        assert isinstance(value, int | bytes)
        if isinstance(value, int):
            assert 0 <= value < 2**64
    data = avl_record_data(rec)
    orjson.dumps(data)  # JSON-safe or it raises
    assert set(BASE_KEYS) <= set(data)
    assert data["valid"] is (rec.satellites != 0 and getattr(rec, "location_present", True))
    assert data["event_triggered"] is (rec.event_io_id != 0)
    for key, value in data["io"].items():
        assert key.isdigit()
        if isinstance(value, str):
            assert value == value.lower()
            bytes.fromhex(value)
        else:
            assert isinstance(value, int)
    return data


# Traccar's ProtocolTest checks every decoded position: a time after 1999 and not far in
# the future, coordinates in range. Ours adds: values survive JSON exactly (no NaN, no
# integer a 64-bit consumer cannot hold) and an implausible device time is flagged.
_FROM_2000_MS = 946_684_800_000
_AHEAD_MS = 25 * 3600 * 1000


def check_traccar_invariants(records: Iterable[Record], received_at: int) -> None:
    """The invariants every Record made from a device frame must hold."""
    for record in records:
        assert record.source == "teltonika"
        assert record.received_at == received_at
        assert _FROM_2000_MS <= record.created_at <= received_at + _AHEAD_MS, record
        data = record.data
        if data.get("device_time_valid") is False:
            assert record.created_at == received_at
            parse_rfc3339_ms(data["device_time"])
        else:
            assert "device_time" not in data
        if record.topic == "position":
            assert -90.0 <= data["latitude"] <= 90.0
            assert -180.0 <= data["longitude"] <= 180.0
            assert isinstance(data["valid"], bool)
            assert isinstance(data["event_triggered"], bool)
        else:
            assert record.topic == "command_response"
            assert data["kind"] in {"command", "response", "nack", "camera", "message", "other"}
        _json_safe(data)
        assert orjson.loads(record_json(record))["data"] == orjson.loads(orjson.dumps(data))


def _json_safe(value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _json_safe(item)
    elif isinstance(value, list):
        for item in value:
            _json_safe(item)
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        assert -(2**63) <= value < 2**64
    else:
        assert value is None or isinstance(value, str | bool)
