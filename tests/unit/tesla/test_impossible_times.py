"""Timestamps that cannot be times: refused with an error reply, never dispatched."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.tesla.core import (
    REFUSAL_IMPOSSIBLE_TIME,
    FrameProcessor,
    decode_frame_to_json,
)
from fleetgate.protocols.tesla.envelope import (
    ERROR_TEXT,
    MESSAGE_STREAM,
    build_error,
    build_stream_envelope,
    parse_envelope,
)
from fleetgate.protocols.tesla.gojson import rfc3339_nanos
from fleetgate.protocols.tesla.proto import vehicle_alert_pb2 as va
from fleetgate.protocols.tesla.proto import vehicle_connectivity_pb2 as vc
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.protocols.tesla.proto import vehicle_error_pb2 as ve
from fleetgate.protocols.tesla.transforms import (
    MAX_TIMESTAMP_SECONDS,
    MIN_TIMESTAMP_SECONDS,
    ImpossibleTimeError,
    PayloadError,
    check_times,
    transform_payload,
)
from fleetgate.records import format_rfc3339_ms
from tests.unit.tesla.helpers import IDENTITY, VIN, payload

NOW = 1_700_000_123_456
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)


def processor() -> FrameProcessor:
    return FrameProcessor(
        IDENTITY,
        configured_topics=frozenset({"V", "alerts", "errors", "connectivity"}),
        socket_id="sock-1",
    )


def frame(topic: str, message: Message, txid: bytes = b"tx-bad-time") -> bytes:
    return build_stream_envelope(
        txid=txid,
        topic=topic.encode(),
        payload=message.SerializeToString(),
        sender_id=b"vehicle_device.device-1",
        created_at=1,
    )


def v_payload(seconds: int, nanos: int = 0) -> vd.Payload:
    message = payload((vd.VehicleSpeed, {"string_value": "16.0"}))
    message.created_at.seconds = seconds
    message.created_at.nanos = nanos
    return message


def alerts_payload(*, started: int = 1_692_044_886, ended: int | None = None) -> va.VehicleAlerts:
    message = va.VehicleAlerts()
    message.created_at.seconds = 1_692_044_886
    alert = message.alerts.add(name="Custom_Alert")
    alert.started_at.seconds = started
    if ended is not None:
        alert.ended_at.seconds = ended
    return message


def errors_payload(error_seconds: int) -> ve.VehicleErrors:
    message = ve.VehicleErrors()
    message.created_at.seconds = 1_692_044_886
    message.errors.add(name="ok", body="b").created_at.seconds = 1_692_044_886
    message.errors.add(name="bad", body="b").created_at.seconds = error_seconds
    return message


def connectivity_payload(seconds: int) -> vc.VehicleConnectivity:
    message = vc.VehicleConnectivity(connection_id="c", status=vc.CONNECTED)
    message.created_at.seconds = seconds
    return message


def _calendar_year(seconds: int) -> int | None:
    """The year of epoch ``seconds`` by Python's calendar (years 1-9999), None outside."""
    try:
        return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)).year
    except OverflowError:
        return None


# -- the check itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (MIN_TIMESTAMP_SECONDS, 0),  # 0001-01-01T00:00:00Z
        (MAX_TIMESTAMP_SECONDS, 999_999_999),  # 9999-12-31T23:59:59.999999999Z
        (0, 0),
        (-1, 0),  # before 1970 is still a time
        (1_700_000_000, 123_000_000),
    ],
)
def test_times_in_years_1_to_9999_pass(seconds: int, nanos: int) -> None:
    check_times(v_payload(seconds, nanos))


@pytest.mark.parametrize(
    ("seconds", "nanos", "message"),
    [
        (10**17, 0, "created_at.seconds 100000000000000000 is not a time"),
        (MAX_TIMESTAMP_SECONDS + 1, 0, "is not a time"),  # year 10000
        (MIN_TIMESTAMP_SECONDS - 1, 0, "is not a time"),  # year 0
        (2**63 - 1, 0, "is not a time"),
        (-(2**63), 0, "is not a time"),
        (0, -1, "created_at.nanos -1"),
        (0, 1_000_000_000, "created_at.nanos 1000000000"),
    ],
)
def test_times_outside_are_refused(seconds: int, nanos: int, message: str) -> None:
    with pytest.raises(ImpossibleTimeError, match=message):
        check_times(v_payload(seconds, nanos))


def test_an_impossible_time_is_a_payload_error() -> None:
    # Callers that refuse undecodable payloads refuse these too.
    assert issubclass(ImpossibleTimeError, PayloadError)


@pytest.mark.parametrize(
    ("topic", "message", "where"),
    [
        ("V", v_payload(10**17), "created_at"),
        ("alerts", alerts_payload(started=-(10**17)), r"alerts\[0\].started_at"),
        ("alerts", alerts_payload(ended=-(10**15)), r"alerts\[0\].ended_at"),
        # 10**17 "seconds" are read as milliseconds first: 10**14 s, still past 9999.
        ("alerts", alerts_payload(started=10**17), r"alerts\[0\].started_at"),
        ("errors", errors_payload(10**17), r"errors\[1\].created_at"),
        ("connectivity", connectivity_payload(-(10**12)), "created_at"),
    ],
)
def test_every_timestamp_of_every_topic_is_checked(
    topic: str, message: Message, where: str
) -> None:
    with pytest.raises(ImpossibleTimeError, match=where):
        transform_payload(topic, message.SerializeToString(), VIN)


def test_alert_in_milliseconds_is_converted_before_the_check() -> None:
    message, _ = transform_payload(
        "alerts", alerts_payload(started=1_692_044_886_337).SerializeToString(), VIN
    )
    assert isinstance(message, va.VehicleAlerts)
    assert message.alerts[0].started_at.seconds == 1_692_044_886


@settings(max_examples=500, deadline=None)
@given(
    seconds=st.one_of(
        INT64, st.integers(MIN_TIMESTAMP_SECONDS - 86_400, MAX_TIMESTAMP_SECONDS + 86_400)
    ),
    nanos=st.one_of(INT32, st.integers(0, 10**9 - 1)),
)
def test_a_time_that_passes_can_be_stored_and_rendered(seconds: int, nanos: int) -> None:
    message = v_payload(seconds, nanos)
    try:
        check_times(message)
    except ImpossibleTimeError:
        # Refused exactly when Python's calendar cannot hold it either.
        assert not (0 <= nanos < 10**9 and _calendar_year(seconds) is not None)
        return
    ms = seconds * 1000 + nanos // 1_000_000
    assert -(2**63) <= ms < 2**63  # fits SQLite's INTEGER and every sink's int64
    assert _calendar_year(seconds) is not None
    when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
    # Rendered without clamping: the text is the time itself.
    assert format_rfc3339_ms(ms).startswith(f"{when.year:04d}-{when.month:02d}-{when.day:02d}T")
    assert rfc3339_nanos(seconds, nanos).startswith(f"{when.year:04d}-")


# -- the frame path: error reply, nothing dispatched ----------------------------------------


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("V", v_payload(10**17)),
        ("alerts", alerts_payload(started=10**17)),
        ("errors", errors_payload(-(10**17))),
        ("connectivity", connectivity_payload(10**17)),
    ],
)
def test_frame_with_an_impossible_time_gets_an_error_reply(topic: str, message: Message) -> None:
    result = processor().process(frame(topic, message), NOW)
    assert result.records == []
    assert result.ack_reply is None
    assert result.is_error
    assert result.refusal == REFUSAL_IMPOSSIBLE_TIME
    assert result.immediate_replies == [build_error(b"tx-bad-time")]
    reply = parse_envelope(result.immediate_replies[0])
    assert reply.message_type == MESSAGE_STREAM
    assert reply.txid == b"tx-bad-time"
    assert reply.stream is not None
    assert reply.stream.payload == ERROR_TEXT
    assert result.error is not None
    assert "is not a time" in result.error


def test_year_9999_is_still_dispatched() -> None:
    result = processor().process(frame("V", v_payload(MAX_TIMESTAMP_SECONDS)), NOW)
    [record] = result.records
    assert record.created_at == MAX_TIMESTAMP_SECONDS * 1000
    assert format_rfc3339_ms(record.created_at) == "9999-12-31T23:59:59.000Z"


def test_decode_refuses_an_impossible_time() -> None:
    with pytest.raises(ImpossibleTimeError, match="is not a time"):
        decode_frame_to_json(frame("V", v_payload(10**17)), VIN)
