"""Shared helpers for the Teltonika unit tests: the real frames and record invariants."""

from __future__ import annotations

import json
import math
from functools import cache
from typing import Any

import orjson

from fleetgate.protocols.teltonika.model import AvlRecord
from fleetgate.protocols.teltonika.records import BASE_KEYS, avl_record_data
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
    assert 0 <= rec.timestamp_ms < 2**64
    assert -32768 <= rec.altitude <= 32767
    assert 0 <= rec.angle <= 0xFFFF
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
    assert data["valid"] is (rec.satellites != 0)
    for key, value in data["io"].items():
        assert key.isdigit()
        if isinstance(value, str):
            assert value == value.lower()
            bytes.fromhex(value)
        else:
            assert isinstance(value, int)
    return data
