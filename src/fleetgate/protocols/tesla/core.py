"""Sans-I/O processing of one Tesla frame: the decision table of spec §5.

:class:`FrameProcessor` is created per socket (it knows the vehicle's identity and which
topics are configured) and turns each binary WebSocket frame into a :class:`FrameResult`:
the Record to dispatch (if any), replies to write now, and the ack to write once the
pipeline (or, for reliable-ack topics, the reliable sink) has accepted the record.

| frame | reply (``outcome``, ``refusal``) |
|---|---|
| over ``max_frame_bytes`` (1) | error, empty txid (``too_big``, ``too_big``) |
| unreadable flatbuffer | error, empty txid (``error``, ``unreadable``) |
| empty / no union | two acks, empty txid and topic (``unknown_type``) |
| union type ≠ 4 | two acks with the txid, empty topic (``unknown_type``) |
| unconfigured topic, sender ≠ identity | error (``error``, ``sender``) |
| known topic whose protobuf does not decode | error (``error``, ``payload``) |
| known topic holding a time that is not one (2) | error (``error``, ``impossible_time``) |
| unconfigured topic, sender ok | ack now, nothing dispatched (``ack_only``) |
| configured topic | one Record + ``ack_reply`` for later (``dispatch``) |

``configured_topics`` ``None`` means every topic is configured: fleetgate's embedded store
takes every record (and a ``"*"`` rule in ``records`` matches every topic), so with either
a vehicle's frames are always dispatched, never merely acked.

(1) Any size, as the reference: the listener discards the bytes of a frame over the limit
as they arrive and passes on only its size (:meth:`FrameProcessor.too_big`); the socket
stays open.
(2) ``created_at`` of the payload, an alert's ``started_at``/``ended_at`` (after the
millisecond fix) or an error's ``created_at`` outside years 1-9999, e.g.
``created_at.seconds = 10**17``; nothing is dispatched.

An impossible time is refused like a payload that does not decode (the vehicle gets the
reference's error reply, so it does not take the frame as delivered): such a value could
never be stored or rendered, and a record no sink can take must not reach the pipeline.
(The reference forwards such bytes unchecked; Go's protojson refuses to render them.)

Nothing here touches sockets, clocks, loggers or metrics: the session counts the reference
metrics from the result (``is_error``, ``counts_as_processed``, ``unknown_msg_type``,
``record_type``, ``payload_size``) and fleetgate's own refusal count (``refusal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError, Message

from fleetgate.protocols.tesla.envelope import (
    MESSAGE_STREAM,
    Envelope,
    EnvelopeError,
    StreamMessage,
    build_ack,
    build_error,
    parse_envelope,
)
from fleetgate.protocols.tesla.identity import VehicleIdentity
from fleetgate.protocols.tesla.limits import MAX_FRAME_BYTES
from fleetgate.protocols.tesla.natural import (
    natural_data,
    natural_vehicle_data,
    payload_created_at_ms,
    transform_vehicle_data_natural,
)
from fleetgate.protocols.tesla.proto import vehicle_connectivity_pb2, vehicle_data_pb2
from fleetgate.protocols.tesla.protojson import protojson_dict
from fleetgate.protocols.tesla.transforms import (
    MAX_NANOS,
    MAX_TIMESTAMP_SECONDS,
    MESSAGE_TYPES,
    MIN_TIMESTAMP_SECONDS,
    TOPIC_CONNECTIVITY,
    TOPIC_V,
    ImpossibleTimeError,
    PayloadError,
    VehicleDatum,
    check_times,
    decode_payload,
    transform_message,
    transform_payload,
    transform_vehicle_data_entries,
)
from fleetgate.protocols.tesla.vwire import read_vehicle_data, read_vehicle_payload, vin_field
from fleetgate.records import SOURCE_TESLA, Record, new_record

OUTCOME_DISPATCH: Final = "dispatch"
OUTCOME_ACK_ONLY: Final = "ack_only"
OUTCOME_UNKNOWN_TYPE: Final = "unknown_type"
OUTCOME_TOO_BIG: Final = "too_big"
OUTCOME_ERROR: Final = "error"

# Why a frame got an error reply (FrameResult.refusal).
REFUSAL_TOO_BIG: Final = "too_big"
REFUSAL_UNREADABLE: Final = "unreadable"
REFUSAL_SENDER: Final = "sender"
REFUSAL_PAYLOAD: Final = "payload"
REFUSAL_IMPOSSIBLE_TIME: Final = "impossible_time"


def _text(raw: bytes) -> str:
    # Go converts bytes to string without validation; replacement keeps ours printable.
    return raw.decode("utf-8", "replace")


# The topics the server knows, as bytes → text: one dict lookup instead of a decode.
_TOPIC_TEXTS: Final = {topic.encode(): topic for topic in MESSAGE_TYPES}
_Payload: Final = vehicle_data_pb2.Payload


@dataclass(slots=True)
class FrameResult:
    """What to do with one frame (see the module table)."""

    records: list[Record]
    immediate_replies: list[bytes]
    ack_reply: bytes | None
    outcome: str
    error: str | None = None
    # For metrics and logs:
    record_type: str = ""  # envelope topic ("" when the frame was not a readable stream)
    txid: str = ""
    payload_size: int = 0  # payload bytes after transform
    unknown_msg_type: str | None = None  # reference label: the union tag byte as a character
    signals: int = 0  # V data entries or alerts entries ("signals" in the reference)
    refusal: str | None = None  # REFUSAL_* when an error reply was produced

    @property
    def is_error(self) -> bool:
        """An error reply was produced (``unexpected_record_err_total``)."""
        return self.outcome in (OUTCOME_ERROR, OUTCOME_TOO_BIG)

    @property
    def counts_as_processed(self) -> bool:
        """The reference counts ``record_total``/``record_size_bytes_total``/``dispatch_total``."""
        return self.outcome in (OUTCOME_DISPATCH, OUTCOME_ACK_ONLY, OUTCOME_UNKNOWN_TYPE)


# Message type → the repeated field counted as "signals" ("" when it has none).
_SIGNAL_FIELDS: dict[type[Message], str] = {}


def _signals(message: Message | None) -> int:
    if message is None:
        return 0
    kind = type(message)
    name = _SIGNAL_FIELDS.get(kind)
    if name is None:
        fields = message.DESCRIPTOR.fields_by_name
        name = next((n for n in ("data", "alerts") if n in fields), "")
        _SIGNAL_FIELDS[kind] = name  # bounded: one entry per generated message class
    return len(getattr(message, name)) if name else 0


class FrameProcessor:
    """Per-socket frame decisions for one authenticated vehicle."""

    def __init__(
        self,
        identity: VehicleIdentity,
        *,
        configured_topics: frozenset[str] | None,
        socket_id: str,
        device_client_version: str = "",
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.identity = identity
        self.configured_topics = configured_topics
        self.socket_id = socket_id
        self.device_client_version = device_client_version
        self.max_frame_bytes = max_frame_bytes
        self._vin_field = vin_field(identity.device_id)  # Payload.vin's bytes
        self._accepted_senders = (
            identity.sender_id.encode("utf-8"),
            identity.device_id.encode("utf-8"),
        )

    def too_big(self, size: int) -> FrameResult:
        """The answer to a frame of ``size`` bytes over ``max_frame_bytes``.

        For callers that never held the frame: the listener discards an oversize frame's
        bytes as they arrive and passes on only its size.
        """
        return FrameResult(
            [],
            [build_error(b"")],
            None,
            OUTCOME_TOO_BIG,
            error=f"frame of {size} bytes over {self.max_frame_bytes}",
            refusal=REFUSAL_TOO_BIG,
        )

    def process(self, frame: bytes, received_at: int) -> FrameResult:
        """Decide what one binary frame means; ``received_at`` is the server time in ms."""
        if len(frame) > self.max_frame_bytes:
            return self.too_big(len(frame))
        try:
            envelope = parse_envelope(frame)
        except EnvelopeError as exc:
            return FrameResult(
                [],
                [build_error(b"")],
                None,
                OUTCOME_ERROR,
                error=str(exc),
                refusal=REFUSAL_UNREADABLE,
            )

        stream = envelope.stream
        if stream is None:  # no union, or a union of another type
            return self._unknown_type(envelope)
        topic = _TOPIC_TEXTS.get(envelope.topic) or _text(envelope.topic)
        configured = self.configured_topics is None or topic in self.configured_topics
        if topic == TOPIC_V and configured:
            result = self._vehicle_data(envelope, stream, received_at)
            if result is not None:
                return result
        return self._general(envelope, stream, topic, configured, received_at)

    def _vehicle_data(
        self, envelope: Envelope, stream: StreamMessage, received_at: int
    ) -> FrameResult | None:
        """:meth:`_general` for a configured ``V`` frame (the usual frame), in one pass.

        None when the payload does not decode or holds an impossible time: the general
        path then makes the error reply.
        """
        vin = self.identity.device_id
        # A payload in upb's own encoding (what vehicles send) is read from its bytes and
        # its VIN spliced in: what parsing it, setting the VIN and serialising it gives.
        fast = read_vehicle_payload(stream.payload, self._vin_field)
        if fast is not None:
            data, signals, created, is_resend, payload = fast
            if is_resend:
                data["is_resend"] = True
        else:
            message = _Payload()
            try:
                message.ParseFromString(stream.payload)
            except DecodeError:
                return None
            read = read_vehicle_data(stream.payload)
            if read is None:  # not the usual shape, or a string to rewrite: through upb
                data = transform_vehicle_data_natural(message, vin)
                signals = len(message.data)
            else:
                data, signals = read
                message.vin = vin  # the only change the transforms make to such a payload
                if message.is_resend:
                    data["is_resend"] = True
            if message.HasField("created_at"):
                created_message = message.created_at
                created = (created_message.seconds, created_message.nanos)
            else:
                created = None
            payload = message.SerializeToString()
        if created is not None:
            seconds, nanos = created
            if not (
                MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS
                and 0 <= nanos <= MAX_NANOS
            ):
                return None
            created_at = seconds * 1000 + nanos // 1_000_000
        else:
            created_at = stream.created_at * 1000 if stream.created_at else received_at
        txid_bytes = envelope.txid
        txid = _text(txid_bytes)
        record = new_record(
            SOURCE_TESLA,
            vin,
            TOPIC_V,
            created_at,
            received_at,
            data,
            payload,
            {
                "txid": txid,
                "device_client_version": self.device_client_version,
                "socket_id": self.socket_id,
            },
        )
        return FrameResult(
            [record],
            [],
            build_ack(txid_bytes, envelope.topic),
            OUTCOME_DISPATCH,
            None,
            TOPIC_V,
            txid,
            len(payload),
            None,
            signals,
        )

    def _general(
        self,
        envelope: Envelope,
        stream: StreamMessage,
        topic: str,
        configured: bool,
        received_at: int,
    ) -> FrameResult:
        """Any stream frame: every topic, every refusal."""
        txid = _text(envelope.txid)

        def error(refusal: str, reason: str) -> FrameResult:
            return FrameResult(
                [],
                [build_error(envelope.txid)],
                None,
                OUTCOME_ERROR,
                error=reason,
                record_type=topic,
                txid=txid,
                refusal=refusal,
            )

        # The deprecated sender_id is only checked for topics nobody consumes; configured
        # topics take the VIN from the certificate whatever the frame claims (anti-spoofing).
        if not configured and stream.sender_id not in self._accepted_senders:
            return error(
                REFUSAL_SENDER,
                f"unexpected_sender_id: {_text(stream.sender_id)!r} "
                f"is not {self.identity.sender_id!r}",
            )
        vin = self.identity.device_id
        # transform_payload, except that V data read during the transforms is kept for
        # natural_vehicle_data instead of being read from upb a second time.
        entries: list[VehicleDatum] | None = None
        is_resend = False
        try:
            message = decode_payload(topic, stream.payload)
        except PayloadError as exc:
            return error(REFUSAL_PAYLOAD, f"payload does not decode: {exc}")
        if message is None:
            payload = stream.payload
        else:
            if isinstance(message, vehicle_data_pb2.Payload):
                entries = transform_vehicle_data_entries(message, vin)
                is_resend = message.is_resend
            else:
                transform_message(topic, message, vin)
            try:
                check_times(message)
            except ImpossibleTimeError as exc:
                return error(REFUSAL_IMPOSSIBLE_TIME, f"impossible value: {exc}")
            payload = message.SerializeToString()

        result = FrameResult(
            [],
            [],
            None,
            OUTCOME_ACK_ONLY,
            record_type=topic,
            txid=txid,
            payload_size=len(payload),
            signals=_signals(message),
        )
        if not configured:
            result.immediate_replies.append(build_ack(envelope.txid, envelope.topic))
            return result

        created_at = payload_created_at_ms(message)
        if created_at is None:
            created_at = stream.created_at * 1000 if stream.created_at else received_at
        result.records.append(
            new_record(
                SOURCE_TESLA,
                self.identity.device_id,
                topic,
                created_at,
                received_at,
                (
                    natural_vehicle_data(entries, is_resend)
                    if entries is not None
                    else natural_data(topic, message)
                ),
                payload,
                {
                    "txid": txid,
                    "device_client_version": self.device_client_version,
                    "socket_id": self.socket_id,
                },
            )
        )
        result.ack_reply = build_ack(envelope.txid, envelope.topic)
        result.outcome = OUTCOME_DISPATCH
        return result

    def _unknown_type(self, envelope: Envelope) -> FrameResult:
        # Reference: without a union it cannot even recover the txid; with a union of
        # another type it keeps the txid. The topic is never echoed. QUIRK: the ack goes
        # out twice (the error branch acks, then falls through to the normal ack).
        txid = envelope.txid if envelope.has_message else b""
        ack = build_ack(txid, b"")
        return FrameResult(
            [],
            [ack, ack],
            None,
            OUTCOME_UNKNOWN_TYPE,
            error=f"unknown message type {envelope.message_type}",
            txid=_text(txid),
            unknown_msg_type=chr(envelope.message_type),
        )


def peek_topic(frame: bytes) -> str:
    """The topic of a frame for rate-limit metrics ("" when it is not a readable stream)."""
    try:
        envelope = parse_envelope(frame)
    except EnvelopeError:
        return ""
    if envelope.message_type != MESSAGE_STREAM or envelope.stream is None:
        return ""
    return _text(envelope.topic)


def connectivity_record(  # noqa: PLR0917 - positional API shared with the session
    identity: VehicleIdentity,
    socket_id: str,
    status: str,
    network_interface: str,
    now_ms: int,
    device_client_version: str = "",
) -> Record:
    """The server-made ``connectivity`` record for a socket opening or closing (spec §9.5).

    ``status`` is ``"CONNECTED"`` or ``"DISCONNECTED"``; txid is the socket id.
    """
    message = vehicle_connectivity_pb2.VehicleConnectivity(
        vin=identity.device_id,
        connection_id=socket_id,
        status=vehicle_connectivity_pb2.ConnectivityEvent.Value(status),
        network_interface=network_interface,
    )
    seconds, millis = divmod(now_ms, 1000)
    message.created_at.seconds = seconds
    message.created_at.nanos = millis * 1_000_000
    transform_message(TOPIC_CONNECTIVITY, message, identity.device_id)
    return Record(
        source=SOURCE_TESLA,
        device_id=identity.device_id,
        topic=TOPIC_CONNECTIVITY,
        created_at=now_ms,
        received_at=now_ms,
        data=natural_data(TOPIC_CONNECTIVITY, message),
        raw=message.SerializeToString(),
        meta={
            "txid": socket_id,
            "device_client_version": device_client_version,
            "socket_id": socket_id,
        },
    )


def decode_frame_to_json(frame: bytes, vin: str) -> dict[str, Any]:
    """Decode one captured frame without a server (for ``fleetgate decode tesla``).

    Applies the same transforms and checks as the server with ``vin`` as the certificate
    VIN. Raises :class:`~fleetgate.protocols.tesla.envelope.EnvelopeError` for unreadable
    frames and :class:`~fleetgate.protocols.tesla.transforms.PayloadError` for bad protobuf
    or a timestamp that is not a time (:class:`~.transforms.ImpossibleTimeError`).
    """
    envelope = parse_envelope(frame)
    out: dict[str, Any] = {
        "txid": _text(envelope.txid),
        "topic": _text(envelope.topic),
        "message_type": envelope.message_type,
        "message_id": _text(envelope.message_id),
    }
    stream = envelope.stream
    if stream is None:
        return out
    topic = out["topic"]
    message, payload = transform_payload(topic, stream.payload, vin)
    out.update(
        created_at=stream.created_at,
        sender_id=_text(stream.sender_id),
        device_type=_text(stream.device_type),
        device_id=_text(stream.device_id),
        delivered_at_epoch_ms=stream.delivered_at_epoch_ms,
        payload=protojson_dict(message) if message is not None else {"hex": payload.hex()},
        data=natural_data(topic, message),
    )
    return out
