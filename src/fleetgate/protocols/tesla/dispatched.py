"""A Tesla record back from what a dispatcher sent: the inverse of the sinks' Tesla form.

Tesla's dispatchers (and fleetgate's kafka, nats, redis... sinks) forward a vehicle record
as the *transformed* protobuf of its topic, or its protojson with
``transmit_decoded_records``, with the VIN, topic and receive time in headers. A consumer
of that log (``fleetgate consume``, the live stream of a scale-out node) gets the same
:class:`~fleetgate.records.Record` the server built: the payload is decoded, never
transformed a second time (it already was), and ``data`` and ``created_at`` are derived
exactly as :class:`~fleetgate.protocols.tesla.core.FrameProcessor` derives them, with one
difference: a payload without a ``created_at`` of its own (alerts, errors) got the frame's
time from the server, which no dispatcher sends; here the receive time stands in.

Raises :class:`~fleetgate.protocols.tesla.transforms.PayloadError` for bytes that are not
the topic's message.
"""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.message import Message

from fleetgate.protocols.tesla.natural import natural_data, payload_created_at_ms
from fleetgate.protocols.tesla.transforms import MESSAGE_TYPES, PayloadError, decode_payload
from fleetgate.records import SOURCE_TESLA, Record, new_record


def record_from_dispatch(  # noqa: PLR0917 - mirrors the dispatcher's message parts
    topic: str,
    payload: bytes,
    vin: str,
    received_at: int,
    txid: str = "",
    device_client_version: str = "",
) -> Record:
    """The record a dispatcher sent as ``payload`` (the transformed protobuf of ``topic``).

    A topic without a decoder keeps its bytes in ``raw`` and gets empty ``data``, as the
    server forwards such payloads unchanged.
    """
    message = decode_payload(topic, payload)
    return _record(topic, message, payload, vin, received_at, txid, device_client_version)


def record_from_protojson(  # noqa: PLR0917 - mirrors the dispatcher's message parts
    topic: str,
    text: bytes,
    vin: str,
    received_at: int,
    txid: str = "",
    device_client_version: str = "",
) -> Record:
    """The record a dispatcher sent as protojson (``transmit_decoded_records``)."""
    factory = MESSAGE_TYPES.get(topic)
    if factory is None:
        raise PayloadError(f"{topic}: no protobuf message to read protojson into")
    message = factory()
    try:
        json_format.Parse(text, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{topic}: {exc}") from exc
    raw = message.SerializeToString()
    return _record(topic, message, raw, vin, received_at, txid, device_client_version)


def _record(  # noqa: PLR0917
    topic: str,
    message: Message | None,
    raw: bytes,
    vin: str,
    received_at: int,
    txid: str,
    device_client_version: str,
) -> Record:
    created_at = payload_created_at_ms(message)
    return new_record(
        SOURCE_TESLA,
        vin,
        topic,
        received_at if created_at is None else created_at,
        received_at,
        natural_data(topic, message),
        raw,
        {"txid": txid, "device_client_version": device_client_version},
    )
