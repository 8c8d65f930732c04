"""Reading the record log back: what a sink sent becomes the record the server built.

The messages here are what the kafka and nats sinks put on the log (their payload form and
their headers), built from real Teltonika frames (shared/testdata), from Tesla frames run
through the server's own FrameProcessor, and from generated records.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.forms import wire_payload
from fleetgate.protocols.teltonika import TeltonikaDecodeError, decode_frame
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.protocols.tesla.core import FrameProcessor, connectivity_record
from fleetgate.protocols.tesla.envelope import build_stream_envelope
from fleetgate.protocols.tesla.proto import vehicle_alert_pb2 as va
from fleetgate.protocols.tesla.proto import vehicle_error_pb2 as ve
from fleetgate.recordlog import LogMessageError, RecordIdWindow, record_from_message
from fleetgate.recordlog.kafka import consumer_properties
from fleetgate.recordlog.reader import ReadOptions, topic_matcher
from fleetgate.records import Record, record_json, set_offset
from fleetgate.sim.tesla import VehicleModel, build_vehicle_frame
from fleetgate.sinks.base import Sink, SinkContext
from tests.teltonika_vectors import frame, vectors
from tests.unit.tesla.helpers import IDENTITY

NOW = 1_700_000_123_456


class _Writer(Sink):
    """The headers every log sink sends (Tesla's seven keys and ``record_id``)."""

    name = "writer"

    async def publish(self, batch: Sequence[Record]) -> None:  # pragma: no cover
        raise NotImplementedError


WRITER = _Writer({}, SinkContext(namespace="fleet", node_id="node-a"))


def sent(record: Record, transmit_decoded: bool = False) -> Record:
    """``record`` as a log reader gets it back from what a sink sent."""
    return record_from_message(
        wire_payload(record, transmit_decoded),
        WRITER.headers(record),
        topic=record.topic,
        key=record.device_id,
    )


AVL_VECTORS = sorted(
    vector_id
    for vector_id, vector in vectors().items()
    if vector["direction"] == "device-to-server"
    and vector["transport"] == "tcp"
    and vector["codec"] in {7, 8, 0x8E, 16}
)


def _teltonika_records(vector_id: str) -> list[Record]:
    raw = frame(vector_id)
    try:
        decoded = decode_frame(raw)
    except TeltonikaDecodeError:
        pytest.skip(f"{vector_id} is a malformed frame (its own tests cover it)")
    if decoded.kind != "avl" or not decoded.crc_ok:
        pytest.skip(f"{vector_id} is not a valid AVL frame")
    return to_records("352093081452251", AvlFrame(decoded.codec or 0, decoded.records, raw), NOW)


def test_the_real_frames_are_there() -> None:
    assert len(AVL_VECTORS) >= 20


@pytest.mark.parametrize("vector_id", AVL_VECTORS)
def test_teltonika_records_of_real_frames_come_back_as_they_were(vector_id: str) -> None:
    for record in _teltonika_records(vector_id):
        back = sent(record)
        assert record_json(back) == record_json(record)
        assert (back.source, back.device_id, back.topic) == ("teltonika", "352093081452251",
                                                             record.topic)
        assert (back.created_at, back.received_at) == (record.created_at, record.received_at)


def _tesla_records() -> list[Record]:
    processor = FrameProcessor(
        IDENTITY, configured_topics=None, socket_id="sock-1", device_client_version="2024.8"
    )
    model = VehicleModel(IDENTITY.device_id, random.Random(7))
    frames = [build_vehicle_frame(model, f"tx-{n}", 1_700_000_000 + n) for n in range(5)]
    alerts = va.VehicleAlerts()
    alert = alerts.alerts.add(name="ChargePortFault", audiences=[va.Customer, va.Service])
    alert.started_at.seconds = 1_700_000_000
    errors = ve.VehicleErrors()
    error = errors.errors.add(name="err", body="boom")
    error.tags["a"] = "b"
    error.created_at.seconds = 1_700_000_001
    for topic, message in ((b"alerts", alerts), (b"errors", errors)):
        frames.append(
            build_stream_envelope(
                txid=b"tx-" + topic, topic=topic, payload=message.SerializeToString(),
                sender_id=b"vehicle_device.device-1", created_at=1_700_000_002,
            )
        )
    records = [r for f in frames for r in processor.process(f, NOW).records]
    records.append(connectivity_record(IDENTITY, "sock-1", "CONNECTED", "wifi", NOW, "2024.8"))
    assert {r.topic for r in records} == {"V", "alerts", "errors", "connectivity"}
    return records


@pytest.mark.parametrize("transmit_decoded", [False, True], ids=["protobuf", "protojson"])
def test_tesla_records_come_back_from_the_vehicles_protobuf_or_its_protojson(
    transmit_decoded: bool,
) -> None:
    for record in _tesla_records():
        back = sent(record, transmit_decoded)
        assert back.source == "tesla"
        assert (back.device_id, back.topic) == (record.device_id, record.topic)
        assert back.received_at == record.received_at
        # The device time is the payload's; alerts and errors have none of their own (the
        # server took the frame's, which no dispatcher sends): the receive time stands in.
        has_time = record.topic in ("V", "connectivity")
        assert back.created_at == (record.created_at if has_time else record.received_at)
        assert back.data == record.data
        if has_time:
            assert record_json(back) == record_json(record)
        assert back.meta is not None and record.meta is not None
        assert back.meta["txid"] == record.meta["txid"]
        assert back.meta["device_client_version"] == "2024.8"
        # The bytes a dispatcher sends again are the vehicle's own (transformed) protobuf.
        assert wire_payload(back) == record.raw


def test_a_payload_without_created_at_takes_the_receive_time() -> None:
    model = VehicleModel("device-1", random.Random(1))
    message = model.payload(1_700_000_000.0)
    from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd

    payload = vd.Payload.FromString(message)
    payload.ClearField("created_at")
    headers = {"vin": "device-1", "txtype": "V", "receivedat": str(NOW)}
    back = record_from_message(payload.SerializeToString(), headers, "V")
    assert back.created_at == back.received_at == NOW


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12,
)
ids = st.text(string.ascii_letters + string.digits + "._:-", min_size=1, max_size=30).filter(
    lambda text: text[0].isalnum()
)
times = st.integers(-62_135_596_800_000, 253_402_300_799_999)


@settings(max_examples=300, deadline=None)
@given(
    source=st.sampled_from(["teltonika", "mqtt", "plugin"]),
    device_id=ids,
    topic=ids,
    created_at=times,
    received_at=times,
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    offset=st.integers(0, 2**40),
)
def test_any_json_form_record_round_trips(
    source: str, device_id: str, topic: str, created_at: int, received_at: int,
    data: dict[str, object], offset: int,
) -> None:
    record = Record(source, device_id, topic, created_at, received_at, data)
    set_offset(record, offset)
    back = sent(record)
    assert record_json(back) == record_json(record)
    assert (back.created_at, back.received_at) == (created_at, received_at)


@settings(max_examples=300, deadline=None)
@given(
    value=st.binary(max_size=200) | st.builds(orjson.dumps, json_values),
    headers=st.dictionaries(
        st.sampled_from(["vin", "txtype", "receivedat", "txid", "record_id"]),
        st.sampled_from(["V", "alerts", "errors", "connectivity", "position", "", "12", "x"])
        | st.text(max_size=10),
    ),
    topic=st.sampled_from(["V", "alerts", "position", ""]),
)
def test_anything_else_is_a_record_or_one_documented_error(
    value: bytes, headers: dict[str, str], topic: str
) -> None:
    try:
        record = record_from_message(value, headers, topic, "key")
    except LogMessageError:
        return
    assert isinstance(record, Record)
    record_json(record)  # and it has its JSON form


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"\x00\x01junk", {"txtype": "position"}, "not JSON and not a Tesla topic"),
        (b"\xff\xff\xff", {"txtype": "V", "vin": "v1"}, "V:"),
        (b"\x0a\x02", {"txtype": "V"}, "without a vin"),
        (b'{"source": "teltonika"}', {"txtype": "position"}, "not a record"),
        (b"{not json", {}, "not JSON"),
        (
            b'{"source":"a","device_id":"d","topic":"t","created_at":"yesterday",'
            b'"received_at":"x","data":{}}',
            {},
            "RFC 3339",
        ),
        (
            b'{"source":"a","device_id":"d","topic":"t","created_at":0,"received_at":0,'
            b'"data":[1]}',
            {},
            "data must be an object",
        ),
    ],
)
def test_messages_that_are_no_record_are_refused_with_a_reason(
    value: bytes, headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(LogMessageError, match=reason):
        record_from_message(value, headers)


def test_the_window_drops_repeats_it_still_remembers() -> None:
    window = RecordIdWindow(3)
    assert [window.seen(i) for i in ("a", "b", "a", "c", "d")] == [
        False, False, True, False, False
    ]
    # "b" was pushed out by c and d ("a" was seen again, so it is the newer one).
    assert window.seen("b") is False
    assert window.seen("d") is True
    assert window.duplicates == 2
    assert len(window) == 3
    assert window.seen(None) is False and window.seen(None) is False


def test_a_window_of_zero_keeps_every_repeat() -> None:
    window = RecordIdWindow(0)
    assert not window.seen("a") and not window.seen("a")
    with pytest.raises(ValueError, match="0 or more"):
        RecordIdWindow(-1)


@pytest.mark.parametrize(
    ("namespace", "topics", "taken", "left"),
    [
        ("fleet", (), ["fleet_V", "fleet_position", "fleet_x_y"], ["fleetV", "other_V", "fleet_"]),
        ("", (), ["_V", "_position"], ["__consumer_offsets", "V", "x_V"]),
        ("fleet", ("V", "alerts"), ["fleet_V", "fleet_alerts"], ["fleet_errors", "fleet_Vx"]),
        ("a.b", (), ["a.b_V"], ["aXb_V"]),
    ],
)
def test_which_log_topics_a_reader_takes(
    namespace: str, topics: tuple[str, ...], taken: list[str], left: list[str]
) -> None:
    matcher = topic_matcher(namespace, topics)
    assert all(matcher.fullmatch(name) for name in taken)
    assert not any(matcher.fullmatch(name) for name in left)


def test_a_reader_drops_producer_keys_and_joins_groups_quickly() -> None:
    producer = {"bootstrap.servers": "k:9092", "acks": "all", "linger.ms": 5,
                "fleetgate.publish_timeout_ms": 1000, "security.protocol": "SSL"}
    alone = consumer_properties(producer, ReadOptions())
    assert alone["bootstrap.servers"] == "k:9092"
    assert alone["security.protocol"] == "SSL"
    assert not {"acks", "linger.ms", "fleetgate.publish_timeout_ms"} & set(alone)
    assert alone["auto.offset.reset"] == "latest"
    assert alone["enable.auto.commit"] is False
    grouped = consumer_properties(
        {**producer, "session.timeout.ms": 30000},
        ReadOptions(from_beginning=True, group="dash"),
    )
    assert grouped["group.id"] == "dash"
    assert grouped["auto.offset.reset"] == "earliest"
    assert grouped["enable.auto.offset.store"] is False
    assert grouped["session.timeout.ms"] == 30000  # configured: kept
    assert grouped["heartbeat.interval.ms"] == 1000


def test_feeding_a_pipeline_that_writes_the_log_it_reads_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleetgate.cli import main

    config = tmp_path / "node.json"
    config.write_text(
        '{"namespace": "fleet", "records": {"*": ["kafka"]},'
        ' "kafka": {"bootstrap.servers": "127.0.0.1:1"}, "data_dir": "' + str(tmp_path) + '"}'
    )
    assert main(["consume", "--config", str(config), "--feed"]) == 2
    assert "every record would be written again" in capsys.readouterr().err
    # Into another namespace it is a copy, not a loop: it would start (not run here).
    from fleetgate.commands.consume import refuse_loop
    from fleetgate.config import load_config

    refuse_loop(load_config(config), "kafka", "other")
