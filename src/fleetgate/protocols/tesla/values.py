"""Shared pieces of every Tesla payload rendering: names, times, locations, door/tire keys.

The protojson, natural ``data``, log and MQTT forms differ in shape but read the same
protobuf values; the renderings they share live here once.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.message import DecodeError, Message

from fleetgate.protocols.tesla.proto import vehicle_data_pb2
from fleetgate.protocols.tesla.transforms import MESSAGE_TYPES
from fleetgate.records import Record

VALUE_FIELDS: Final = vehicle_data_pb2.Value.DESCRIPTOR.fields_by_name
# Built once from the descriptors: a datum costs one dict lookup, not a descriptor walk.
FIELD_NAMES: Final = {
    number: value.name
    for number, value in vehicle_data_pb2.Field.DESCRIPTOR.values_by_number.items()
}


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
    name = FIELD_NAMES.get(number)
    return name if name is not None else str(number)


def enum_name(fd: Any, number: int) -> str | None:
    """Name of enum value ``number`` of field ``fd``, None for numbers newer than our protos."""
    value = fd.enum_type.values_by_number.get(number)
    return value.name if value is not None else None


def ts_ms(ts: Any) -> int:
    """A protobuf Timestamp in epoch milliseconds."""
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def enum_string(fd: Any, number: int) -> str:
    """Go's ``Enum.String()``: the name, or the number as text."""
    return enum_name(fd, number) or str(number)


def time_text(raw: Any) -> str:
    """A ``time_value`` (hour, minute, second) as ``HH:MM:SS``."""
    return f"{raw.hour:02d}:{raw.minute:02d}:{raw.second:02d}"


def location_dict(raw: Any) -> dict[str, float]:
    """A ``location_value`` as ``{"latitude": ..., "longitude": ...}``."""
    return {"latitude": raw.latitude, "longitude": raw.longitude}


DOOR_KEYS: Final = (
    ("DriverFront", "DriverFront"),
    ("PassengerFront", "PassengerFront"),
    ("DriverRear", "DriverRear"),
    ("PassengerRear", "PassengerRear"),
    ("TrunkFront", "TrunkFront"),
    ("TrunkRear", "TrunkRear"),
)
TIRE_KEYS: Final = (
    ("FrontLeft", "front_left"),
    ("FrontRight", "front_right"),
    ("RearLeft", "rear_left"),
    ("RearRight", "rear_right"),
)
# Semi trucks (VIN character 4 is "T") name the axles differently.
SEMI_TIRE_KEYS: Final = (
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


def tire_keys(vin: str) -> tuple[tuple[str, str], ...]:
    """(output key, proto attribute) pairs of a tire-location value for this vehicle."""
    return SEMI_TIRE_KEYS if vin[3:4] == "T" else TIRE_KEYS
