"""Shared builders for the Tesla core tests."""

from __future__ import annotations

from fleetgate.protocols.tesla.identity import VehicleIdentity
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd

# Spec §4 reference vectors, recorded from Tesla's Go server itself (its protocol core built
# unchanged) answering frames from its own tests. Go's CreateByteString ends every byte vector
# with a NUL inside its padding, so these are longer than a plain flatbuffers writer's.
REFERENCE_ACK_1234_V = bytes.fromhex(  # ack, txid "1234", topic "V" (80 bytes)
    "1400000000000e001800140010000f00080004000e000000140000002c00000000000005100000001400"
    "0000000000000000000001000000560000000400000031323334000000000000000000000000"
)
REFERENCE_ACK_EMPTY = bytes.fromhex(  # ack of an empty frame: empty txid and topic (76 bytes)
    "1400000000000e001800140010000f00080004000e000000140000002800000000000005100000001400"
    "00000000000000000000000000000000000000000000000000000000000000000000"
)
REFERENCE_ERROR_EMPTY_TXID = bytes.fromhex(  # error reply to a text frame (156 bytes)
    "1400000000000e001800140010000f00080004000e000000140000003400000000000004100000001400"
    "0000000000000000000000000000000000000000000000000e001400000010000c00080004000e000000"
    "100000001400000018000000340000000000000000000000000000000000000018000000696e636f7272"
    "656374206d65737361676520666f726d6174000000000000000000000000"
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
