"""FrameProcessor: the decision table of spec §5 and the unit-test facts of §15."""

from __future__ import annotations

import json
from typing import Any

import flatbuffers
import orjson
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.forms import wire_payload
from fleetgate.forms.tesla_log import log_form
from fleetgate.forms.tesla_mqtt import mqtt_messages
from fleetgate.protocols.tesla.core import (
    FrameProcessor,
    FrameResult,
    connectivity_record,
    decode_frame_to_json,
    peek_topic,
)
from fleetgate.protocols.tesla.envelope import (
    ERROR_TEXT,
    MESSAGE_STREAM,
    MESSAGE_STREAM_ACK,
    build_ack,
    build_error,
    build_stream_envelope,
    parse_envelope,
)
from fleetgate.protocols.tesla.proto import vehicle_connectivity_pb2 as vc
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.records import record_metadata
from tests.unit.tesla import oracle
from tests.unit.tesla.helpers import IDENTITY, VIN, integration_payload, payload

NOW = 1_700_000_123_456
TOPICS = frozenset({"V", "alerts", "errors", "connectivity", "metrics"})


def processor(topics: frozenset[str] = TOPICS, **kw: object) -> FrameProcessor:
    return FrameProcessor(
        IDENTITY,
        configured_topics=topics,
        socket_id="sock-1",
        device_client_version="1.0.0",
        **kw,  # type: ignore[arg-type]
    )


def frame(
    topic: bytes = b"V",
    body: bytes | None = None,
    sender: bytes = b"vehicle_device.device-1",
    txid: bytes = b"integration-test-txid",
    created_at: int = 1,
) -> bytes:
    return build_stream_envelope(
        txid=txid,
        topic=topic,
        payload=integration_payload().SerializeToString() if body is None else body,
        sender_id=sender,
        device_type=b"vehicle_device",
        device_id=b"ignored",
        created_at=created_at,
        delivered_at_epoch_ms=NOW,
        message_id=b"integration-test-message-id",
    )


def assert_error_reply(result: FrameResult, txid: bytes) -> None:
    assert result.outcome in ("error", "too_big")
    assert result.is_error
    assert result.records == []
    assert result.ack_reply is None
    assert result.immediate_replies == [build_error(txid)]
    reply = parse_envelope(result.immediate_replies[0])
    assert reply.message_type == MESSAGE_STREAM
    assert reply.stream is not None
    assert reply.stream.payload == ERROR_TEXT
    assert reply.txid == txid


def assert_double_ack(result: FrameResult, txid: bytes) -> None:
    assert result.outcome == "unknown_type"
    assert not result.is_error
    assert result.counts_as_processed
    assert result.records == []
    assert result.ack_reply is None
    assert result.immediate_replies == [build_ack(txid, b"")] * 2
    reply = parse_envelope(result.immediate_replies[0])
    assert (reply.message_type, reply.txid, reply.topic) == (MESSAGE_STREAM_ACK, txid, b"")


# -- the decision table -------------------------------------------------------------------


def test_configured_topic_dispatches_and_acks_later() -> None:
    result = processor().process(frame(), NOW)
    assert result.outcome == "dispatch"
    assert result.immediate_replies == []
    assert result.ack_reply == build_ack(b"integration-test-txid", b"V")
    ack = parse_envelope(result.ack_reply)
    assert (ack.message_type, ack.topic, ack.txid) == (5, b"V", b"integration-test-txid")
    [record] = result.records
    assert (record.source, record.device_id, record.topic) == ("tesla", VIN, "V")
    assert record.received_at == NOW
    assert record.meta == {
        "txid": "integration-test-txid",
        "device_client_version": "1.0.0",
        "socket_id": "sock-1",
    }
    assert record_metadata(record)["device_client_version"] == "1.0.0"
    body = vd.Payload.FromString(record.raw)  # what Kafka etc. receive
    assert body.vin == VIN
    assert len(body.data) == 2
    assert body.data[0].value.string_value == "My Test Vehicle"
    loc = body.data[1].value.location_value
    assert (loc.latitude, loc.longitude) == (-37.412374, 122.145867)
    assert record.data == {
        "VehicleName": "My Test Vehicle",
        "Location": {"latitude": -37.412374, "longitude": 122.145867},
    }
    assert result.record_type == "V"
    assert result.payload_size == len(record.raw)
    assert result.signals == 2
    assert result.counts_as_processed


def test_configured_topic_with_wrong_sender_is_accepted_under_certificate_vin() -> None:
    result = processor().process(frame(sender=b"vehicle_device.BAD123"), NOW)
    assert result.outcome == "dispatch"
    assert result.records[0].device_id == VIN
    assert vd.Payload.FromString(result.records[0].raw).vin == VIN


def test_unconfigured_topic_with_wrong_sender_is_error() -> None:
    result = processor(frozenset({"alerts"})).process(frame(sender=b"vehicle_device.BAD123"), NOW)
    assert_error_reply(result, b"integration-test-txid")
    assert "unexpected_sender_id" in (result.error or "")


@pytest.mark.parametrize("sender", [b"vehicle_device.device-1", b"device-1"])
def test_unconfigured_topic_with_matching_sender_acks_echoing_topic(sender: bytes) -> None:
    result = processor(frozenset({"V"})).process(
        frame(topic=b"custom", body=b"x", sender=sender), NOW
    )
    assert result.outcome == "ack_only"
    assert result.records == []
    assert result.ack_reply is None
    assert result.immediate_replies == [build_ack(b"integration-test-txid", b"custom")]
    assert result.counts_as_processed
    assert result.record_type == "custom"


def test_unconfigured_known_topic_still_validates_its_payload() -> None:
    # The reference transforms before looking at routing: a bad V payload is an error
    # even when nobody consumes V.
    result = processor(frozenset()).process(frame(body=b"\x0a\xff\xff"), NOW)
    assert_error_reply(result, b"integration-test-txid")


@pytest.mark.parametrize("topic", [b"V", b"alerts", b"errors", b"connectivity"])
def test_undecodable_payload_is_error(topic: bytes) -> None:
    result = processor().process(frame(topic=topic, body=b"\x0a\xff\xff\xff"), NOW)
    assert_error_reply(result, b"integration-test-txid")
    assert "decode" in (result.error or "")


def test_text_frame_gets_incorrect_message_format_error() -> None:
    result = processor().process(b"D4,test,1234,1234,1.0,xxx", NOW)
    assert_error_reply(result, b"")
    assert not result.counts_as_processed


def test_empty_frame_gets_two_acks() -> None:
    result = processor().process(b"", NOW)
    assert_double_ack(result, b"")
    assert result.unknown_msg_type == "\x00"


def test_envelope_without_union_gets_two_acks_with_empty_txid() -> None:
    b = flatbuffers.Builder(0)
    txid = b.CreateByteVector(b"has-a-txid")
    topic = b.CreateByteVector(b"V")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, txid, 0)
    b.PrependUOffsetTRelativeSlot(1, topic, 0)
    b.PrependUint8Slot(2, MESSAGE_STREAM, 0)
    b.Finish(b.EndObject())
    assert_double_ack(processor().process(bytes(b.Output()), NOW), b"")


def test_other_union_type_gets_two_acks_with_its_txid() -> None:
    vehicle_ack = build_ack(b"tx-5", b"V")  # message_type 5
    result = processor().process(vehicle_ack, NOW)
    assert_double_ack(result, b"tx-5")
    assert result.unknown_msg_type == "\x05"


def test_too_big_frame_is_error_with_empty_txid() -> None:
    proc = processor(max_frame_bytes=200)
    big = frame(body=b"\x1a" + b"\x7f" + b"x" * 127 + b"y" * 100)
    assert len(big) > 200
    result = proc.process(big, NOW)
    assert result.outcome == "too_big"
    assert_error_reply(result, b"")


def test_default_size_limit_is_one_million_bytes() -> None:
    proc = processor()
    exact = b"\xff" * 1_000_000
    assert proc.process(exact, NOW).outcome == "error"  # unreadable, but not too big
    assert proc.process(exact + b"\xff", NOW).outcome == "too_big"


def test_opaque_configured_topic_is_forwarded_untouched() -> None:
    result = processor().process(frame(topic=b"metrics", body=b"\xde\xad"), NOW)
    [record] = result.records
    assert record.raw == b"\xde\xad"
    assert record.data == {}
    assert wire_payload(record, transmit_decoded=False) == b"\xde\xad"
    assert wire_payload(record, transmit_decoded=True) == b"{}"


# -- record details -----------------------------------------------------------------------


def test_created_at_prefers_payload_then_envelope_then_receive_time() -> None:
    proc = processor()
    with_payload_time = payload((vd.Soc, {"int_value": 1}), created_at=1_692_044_886)
    r1 = proc.process(frame(body=with_payload_time.SerializeToString(), created_at=5), NOW)
    assert r1.records[0].created_at == 1_692_044_886_000
    no_payload_time = payload((vd.Soc, {"int_value": 1})).SerializeToString()
    r2 = proc.process(frame(body=no_payload_time, created_at=1_700_000_000), NOW)
    assert r2.records[0].created_at == 1_700_000_000_000
    r3 = proc.process(frame(body=no_payload_time, created_at=0), NOW)
    assert r3.records[0].created_at == NOW


def test_transmit_decoded_wire_form_is_protojson_of_transformed_payload() -> None:
    [record] = processor().process(frame(), NOW).records
    decoded = json.loads(wire_payload(record, transmit_decoded=True))
    assert decoded["vin"] == VIN
    assert decoded["data"][1]["value"] == {
        "locationValue": {"latitude": -37.412374, "longitude": 122.145867}
    }


def test_connectivity_record() -> None:
    record = connectivity_record(IDENTITY, "sock-uuid", "CONNECTED", "wifi", NOW, "1.0.0")
    body = vc.VehicleConnectivity.FromString(record.raw)
    assert body.vin == VIN
    assert body.connection_id == "sock-uuid"
    assert body.status == vc.CONNECTED
    assert body.network_interface == "wifi"
    assert body.created_at.seconds * 1000 + body.created_at.nanos // 1_000_000 == NOW
    assert (record.topic, record.device_id, record.created_at) == ("connectivity", VIN, NOW)
    assert record.meta is not None
    assert record.meta["txid"] == "sock-uuid"
    assert record.meta["device_client_version"] == "1.0.0"
    assert record.data == {
        "connection_id": "sock-uuid",
        "status": "CONNECTED",
        "network_interface": "wifi",
    }
    gone = connectivity_record(IDENTITY, "sock-uuid", "DISCONNECTED", "", NOW)
    assert vc.VehicleConnectivity.FromString(gone.raw).status == vc.DISCONNECTED


def test_peek_topic() -> None:
    assert peek_topic(frame(topic=b"alerts")) == "alerts"
    assert peek_topic(b"garbage!") == ""
    assert peek_topic(build_ack(b"t", b"V")) == ""
    assert peek_topic(b"") == ""


def test_decode_frame_to_json() -> None:
    out = decode_frame_to_json(frame(), "5YJ3")
    assert out["txid"] == "integration-test-txid"
    assert out["topic"] == "V"
    assert out["message_id"] == "integration-test-message-id"
    assert out["sender_id"] == "vehicle_device.device-1"
    assert out["payload"]["vin"] == "5YJ3"
    assert out["data"]["Location"] == {"latitude": -37.412374, "longitude": 122.145867}
    opaque = decode_frame_to_json(frame(topic=b"metrics", body=b"\x01"), "5YJ3")
    assert opaque["payload"] == {"hex": "01"}
    assert decode_frame_to_json(build_ack(b"a", b"V"), "5YJ3") == {
        "txid": "a",
        "topic": "V",
        "message_type": 5,
        "message_id": "",
    }


# -- every Value member through the whole core --------------------------------------------

_VALUE_FIELDS = list(vd.Value.DESCRIPTOR.fields)


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    kinds: dict[int, st.SearchStrategy[Any]] = {
        FieldDescriptor.TYPE_STRING: st.text(max_size=30),
        FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
        FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
        FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
        FieldDescriptor.TYPE_DOUBLE: st.floats(),
        FieldDescriptor.TYPE_BOOL: st.booleans(),
    }
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(0, len(fd.enum_type.values) + 2)  # includes unknown numbers
    return kinds[fd.type]


@st.composite
def values(draw: st.DrawFn) -> vd.Value:
    value = vd.Value()
    fd = draw(st.sampled_from(_VALUE_FIELDS))
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        inner = getattr(value, fd.name)
        inner.SetInParent()
        for sub in fd.message_type.fields:
            if draw(st.booleans()):
                setattr(inner, sub.name, draw(_scalar(sub)))
    else:
        setattr(value, fd.name, draw(_scalar(fd)))
    return value


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), values()), max_size=6),
    st.binary(max_size=40),
    st.booleans(),
)
def test_any_payload_round_trips_through_the_core(
    data: list[tuple[int, vd.Value]], txid: bytes, resend: bool
) -> None:
    message = vd.Payload(is_resend=resend)
    for key, value in data:
        message.data.add(key=key, value=value)  # type: ignore[arg-type]
    result = processor().process(frame(body=message.SerializeToString(), txid=txid), NOW)
    assert result.outcome == "dispatch"
    assert result.ack_reply == build_ack(txid, b"V")
    [record] = result.records
    out = vd.Payload.FromString(record.raw)
    assert out.vin == VIN
    assert [d.key for d in out.data] == [key for key, _ in data]
    for before, after in zip(message.data, out.data, strict=True):
        if before.value.WhichOneof("value") != "string_value":
            assert before.value == after.value
    # every JSON form renders
    orjson.dumps(record.data)
    json.loads(wire_payload(record, transmit_decoded=True))
    for _, body in mqtt_messages(record, "t"):
        json.loads(body)
    orjson.dumps(log_form(record, True))
    orjson.dumps(log_form(record, False))


@settings(max_examples=300, deadline=None)
@given(oracle.v_payloads())
def test_v_record_equals_the_plain_transform_and_data(message: vd.Payload) -> None:
    result = processor().process(frame(body=message.SerializeToString()), NOW)
    [record] = result.records
    expected = vd.Payload()
    expected.CopyFrom(message)
    oracle.transform_v(expected, VIN)
    assert record.raw == expected.SerializeToString()
    assert oracle.typed(record.data) == oracle.typed(oracle.v_data(expected))
    assert result.payload_size == len(record.raw)
    assert result.signals == len(message.data)
