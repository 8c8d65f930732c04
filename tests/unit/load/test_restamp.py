"""Restamped load-generator frames: new record times, a valid CRC, nothing else changed."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.encoder import encode_imei
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.model import CODEC_7, CODEC_8E, MAX_TIMESTAMP_MS, AvlRecord
from fleetgate.protocols.tesla.envelope import parse_envelope
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.sim.load import tesla as tesla_load
from fleetgate.sim.restamp import StampedFrame, StampedVehicleFrame, TrackerClock, VehicleClock
from fleetgate.sim.tesla import VehicleModel, build_vehicle_frame
from tests.unit.teltonika.helpers import IMEI
from tests.unit.teltonika.strategies import AVL_CASES, avl_records

VIN = "5YJ3E1EA7KF000001"
STAMPABLE = [case for case in AVL_CASES if case[0] != CODEC_7]


def _decoded(raw: bytes, io16_group: bool) -> AvlFrame:
    """The frame as the server's connection reads it (CRC checked)."""
    connection = TcpConnection(io16_group=io16_group)
    _, event = connection.receive_data(encode_imei(IMEI) + raw)
    assert isinstance(event, AvlFrame)
    return event


@given(
    st.sampled_from(STAMPABLE).flatmap(
        lambda c: st.tuples(
            st.just(c[0]), st.just(c[1]), st.lists(avl_records(c[0], c[1]), min_size=1, max_size=5)
        )
    ),
    st.integers(0, MAX_TIMESTAMP_MS // 2),
    st.integers(0, 3_600_000),
)
def test_stamped_frame_carries_the_new_times_and_nothing_else_changes(
    case: tuple[int, bool, list[AvlRecord]], first_ms: int, step_ms: int
) -> None:
    codec, io16_group, records = case
    stamped = StampedFrame.encode(codec, records, io16_group=io16_group)
    raw = stamped.stamped(first_ms, step_ms)
    expected = [
        dataclasses.replace(record, timestamp_ms=first_ms + n * step_ms)
        for n, record in enumerate(records)
    ]
    assert _decoded(raw, io16_group).records == tuple(expected)
    assert len(raw) == len(stamped.frame)


def test_a_tracker_clock_moves_on_from_frame_to_frame() -> None:
    record = AvlRecord(1_700_000_000_000, 0, 25.0, 54.0, 100, 90, 10, 50, 0, {239: 1})
    frame = StampedFrame.encode(CODEC_8E, [record, record, record])
    clock = TrackerClock(start_ms=1_000_000, step_ms=500)
    times = [r.timestamp_ms for _ in range(3) for r in _decoded(clock.stamp(frame), False).records]
    assert times == [1_000_000 + 500 * n for n in range(9)]


@given(avl_records(CODEC_7))
def test_a_codec_7_frame_is_sent_as_encoded(record: AvlRecord) -> None:
    stamped = StampedFrame.encode(CODEC_7, [record])
    assert stamped.stamped(123, 1) == stamped.frame


def _payload(frame: bytes) -> vd.Payload:
    stream = parse_envelope(frame).stream
    assert stream is not None
    return vd.Payload.FromString(stream.payload)


@given(st.integers(0, 50), st.integers(2**28, 2**35 - 1))
def test_stamped_vehicle_frame_changes_the_payload_time_and_nothing_else(
    seed: int, seconds: int
) -> None:
    now_s = 1_790_000_000.5 + seed
    frame = build_vehicle_frame(VehicleModel(VIN, random.Random(seed)), "lg0001", now_s)
    stamped = StampedVehicleFrame.locate(frame, int(now_s * 1e9))
    raw = stamped.stamped(seconds)
    before, after = _payload(frame), _payload(raw)
    assert after.created_at.seconds == seconds
    assert after.created_at.nanos == before.created_at.nanos
    after.created_at.seconds = before.created_at.seconds
    assert after == before
    assert parse_envelope(raw)._replace(stream=None) == parse_envelope(frame)._replace(stream=None)


def test_a_vehicle_clock_moves_on_from_frame_to_frame() -> None:
    frames = tesla_load.frame_pool(VIN, 3, seed=1)
    clock = VehicleClock(start_s=1_800_000_000)
    sent = [clock.stamp(frames[n % 3]) for n in range(7)]
    assert [_payload(raw).created_at.seconds for raw in sent] == [
        1_800_000_000 + n for n in range(7)
    ]


def test_a_time_outside_five_varint_bytes_is_refused() -> None:
    frame = tesla_load.frame_pool(VIN, 1, seed=1)[0]
    for seconds in (2**28 - 1, 2**35):
        with pytest.raises(ValueError, match="5-byte varint"):
            frame.stamped(seconds)
