"""Shared builders for the Tesla core tests."""

from __future__ import annotations

from fleetgate.protocols.tesla.identity import VehicleIdentity
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd

# Spec §4 reference vectors (built by the Go server's call order).
ACK_VECTOR = bytes.fromhex(
    "1400000000000e001800140010000f00080004000e0000001400000038000000000000050c000000100000"
    "0000000000010000005600000015000000696e746567726174696f6e2d746573742d7478696400000000000000"
)
ERROR_VECTOR = bytes.fromhex(
    "1400000000000e001800140010000f00080004000e0000001400000030000000000000040c0000000c0000"
    "000000000000000000040000003132333400000e001400000010000c00080004000e000000100000001000"
    "00001000000028000000000000000000000018000000696e636f7272656374206d65737361676520666f72"
    "6d617400000000"
)

VIN = "device-1"
IDENTITY = VehicleIdentity(VIN, "vehicle_device")


def payload(
    *data: tuple[int, dict[str, object]],
    vin: str = "",
    created_at: int | None = None,
    is_resend: bool = False,
) -> vd.Payload:
    """A V Payload from (Field number, {Value oneof member: value}) pairs.

    A message-typed member is given as a dict of its fields; ``{}`` leaves the value unset.
    """
    message = vd.Payload(vin=vin, is_resend=is_resend)
    if created_at is not None:
        message.created_at.seconds = created_at
    for key, value in data:
        datum = message.data.add(key=key)  # type: ignore[arg-type]
        for member, inner in value.items():
            if isinstance(inner, dict):
                getattr(datum.value, member).SetInParent()
                for name, v in inner.items():
                    setattr(getattr(datum.value, member), name, v)
            else:
                setattr(datum.value, member, inner)
    return message


def integration_payload() -> vd.Payload:
    """The payload of the reference integration test (spec §15)."""
    return payload(
        (vd.VehicleName, {"string_value": "My Test Vehicle"}),
        (vd.Location, {"string_value": "(37.412374 S, 122.145867 E)"}),
        created_at=1_700_000_000,
    )
