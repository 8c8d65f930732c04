"""The learned-layout fast path against the general one: the same records, the same Records.

A frame whose layout was learned is read by :func:`layouts.decode_learned` (two structs) and
turned into Records by a compiled row builder; every other frame takes the general decoder
and record builder. Whatever a device sends, both paths must give the very same result:
the same AvlRecords, the same errors, the same Records with the same ``data`` key order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetgate.protocols.teltonika import layouts
from fleetgate.protocols.teltonika import records as records_module
from fleetgate.protocols.teltonika.avl import decode_avl_span
from fleetgate.protocols.teltonika.connection import decode_data_frame
from fleetgate.protocols.teltonika.encoder import encode_avl_frame
from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import AvlFrame, GprsFrame
from fleetgate.protocols.teltonika.io_names import IO_TABLES, IoTable
from fleetgate.protocols.teltonika.model import (
    CODEC_8,
    CODEC_8E,
    CODEC_16,
    MAX_TIMESTAMP_MS,
    AvlRecord,
)
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.protocols.teltonika.udp import UdpDatagram, decode_udp_datagram, encode_udp_datagram
from fleetgate.records import Record, new_record, record_json
from tests.unit.teltonika.helpers import io16, select
from tests.unit.teltonika.strategies import avl_records

NOW = 1_767_225_600_000
IMEI = "356307042441013"
TABLES = (None, *IO_TABLES.values())
# Hot enough that every layout has its compiled builder, whatever ran before.
HOT = records_module._COMPILE_AFTER + 1

GOOD = [v for v in select(codecs=(CODEC_8, CODEC_8E, CODEC_16), integrity_error=False)
        if not io16(v)]


@pytest.fixture(autouse=True)
def _cold() -> Iterator[None]:
    layouts.forget()
    yield
    layouts.forget()


def general(frame: bytes) -> AvlFrame | GprsFrame | tuple[type[Exception], str]:
    """What decode_data_frame returned before layouts were learned (or the error)."""
    try:
        return AvlFrame(frame[8], decode_avl_span(frame, 8, len(frame) - 4), frame)
    except TeltonikaDecodeError as exc:
        return type(exc), str(exc)


def decoded(frame: bytes) -> AvlFrame | GprsFrame | tuple[type[Exception], str]:
    try:
        return decode_data_frame(frame)
    except TeltonikaDecodeError as exc:
        return type(exc), str(exc)


def as_json(records: list[Record]) -> list[bytes]:
    """Every field and the data's key order (record_json keeps it), plus the raw bytes."""
    return [record_json(r) + r.raw for r in records]


def general_records(frame: AvlFrame, table: IoTable | None, received_at: int) -> list[Record]:
    plain = AvlFrame(frame.codec, decode_avl_span(frame.raw, 8, len(frame.raw) - 4), frame.raw)
    return to_records(IMEI, plain, received_at, table)


def assert_same_both_ways(frame: bytes, received_at: int = NOW) -> AvlFrame:
    """Learn ``frame`` and check its fast reading against the general one, hot and cold."""
    expected = general(frame)
    assert isinstance(expected, AvlFrame)
    first = decode_data_frame(frame)  # the general path, which learns the layout
    assert first == expected
    fast = decode_data_frame(frame)
    assert isinstance(fast, AvlFrame)
    if fast.rows is not None:
        assert fast == expected  # the lazily made records equal the decoder's
        assert [r.io_groups for r in fast.records] == [r.io_groups for r in expected.records]
    for table in TABLES:
        want = general_records(fast, table, received_at)
        for _ in range(HOT):  # the warm-up path, then the compiled builder
            got = to_records(IMEI, decode_data_frame(frame), received_at, table)
            assert got == want
            assert as_json(got) == as_json(want)
    return fast


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_every_real_frame_is_the_same_learned(v: dict[str, Any]) -> None:
    frame = bytes.fromhex(v["hex"])
    fast = assert_same_both_ways(frame)
    duplicates = any(r.io_groups and sum(r.io_groups) != len(r.io) for r in fast.records)
    assert (fast.rows is None) == duplicates, "every real frame without duplicate ids learns"


def frames_of(codec: int) -> st.SearchStrategy[bytes]:
    return st.lists(avl_records(codec), min_size=1, max_size=4).map(
        lambda records: encode_avl_frame(codec, records)
    )


any_frame = st.sampled_from((CODEC_8, CODEC_8E, CODEC_16)).flatmap(frames_of)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_frame, st.integers(0, MAX_TIMESTAMP_MS))
def test_random_frames_are_the_same_learned(frame: bytes, received_at: int) -> None:
    layouts.forget()
    fast = assert_same_both_ways(frame, received_at)
    assert fast.rows is not None  # generated records never repeat an id


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_frame, st.data())
def test_a_changed_byte_reads_as_the_general_decoder_reads_it(
    frame: bytes, data: st.DataObject
) -> None:
    """A learned layout never accepts what the general decoder would read otherwise:
    a changed count, id or NX length falls back; a changed value is read the same."""
    layouts.forget()
    decode_data_frame(frame)  # learned
    position = data.draw(st.integers(9, len(frame) - 6), label="position")
    value = data.draw(st.integers(0, 255), label="value")
    changed = frame[:position] + bytes([value]) + frame[position + 1 :]
    expected = general(changed)
    got = decoded(changed)
    assert got == expected
    if isinstance(got, AvlFrame) and isinstance(expected, AvlFrame):
        assert [r.io_groups for r in got.records] == [r.io_groups for r in expected.records]
        for table in TABLES:
            assert as_json(to_records(IMEI, got, NOW, table)) == as_json(
                general_records(got, table, NOW)
            )


@pytest.mark.parametrize("codec", [CODEC_8, CODEC_8E, CODEC_16])
def test_every_byte_of_a_learned_frame_changed_reads_as_the_general_decoder_reads_it(
    codec: int,
) -> None:
    io: dict[int, int | bytes] = {1: 1, 200: 0x1234, 3: 0x12345678, 250: 1 << 40}
    groups = (1, 1, 1, 1, 0, 0)
    if codec == CODEC_8E:
        io |= {385: b"\x01\x02\x03", 1000: b""}
        groups = (1, 1, 1, 1, 2, 0)
    records = [record_of(io, groups), record_of({}, (0, 0, 0, 0, 0, 0))]
    if codec == CODEC_16:
        records = [AvlRecord(NOW, 1, 25.0, 54.0, 100, 0, 8, 0, 0, io, 5, groups)]  # type: ignore[arg-type]
    frame = encode_avl_frame(codec, records)
    for position in range(9, len(frame) - 4):
        for value in {0, 1, 255, frame[position] ^ 0x10}:
            changed = frame[:position] + bytes([value]) + frame[position + 1 :]
            layouts.forget()
            decode_data_frame(frame)  # learned
            assert decoded(changed) == general(changed), position


def record_of(io: dict[int, int | bytes], groups: tuple[int, ...], ts: int = NOW) -> AvlRecord:
    return AvlRecord(ts, 0, 25.0, 54.0, 100, 0, 8, 0, 0, io, None, groups)  # type: ignore[arg-type]


def test_two_layouts_of_one_length_both_stay_learned() -> None:
    one = encode_avl_frame(CODEC_8E, [record_of({239: 1, 66: 12000}, (1, 1, 0, 0, 0, 0))])
    two = encode_avl_frame(CODEC_8E, [record_of({240: 0, 67: 4100}, (1, 1, 0, 0, 0, 0))])
    assert len(one) == len(two)
    for frame in (one, two, one, two):
        decode_data_frame(frame)
    for frame in (one, two):
        event = decode_data_frame(frame)
        assert isinstance(event, AvlFrame) and event.rows is not None
        assert event == general(frame)


def test_a_mixed_frame_is_learned_record_by_record() -> None:
    frame = encode_avl_frame(CODEC_8E, [
        record_of({239: 1, 66: 12000}, (1, 1, 0, 0, 0, 0)),
        record_of({1: 1, 385: b"\x01\x02"}, (1, 0, 0, 0, 1, 0)),
        record_of({}, (0, 0, 0, 0, 0, 0)),
    ])
    fast = assert_same_both_ways(frame)
    assert fast.rows is not None
    assert [layout.keys for layout, _ in fast.rows] == [(239, 66), (1, 385), ()]


def test_a_time_past_9999_is_refused_on_the_learned_layout_too() -> None:
    layout = (1, 0, 0, 0, 0, 0)
    decode_data_frame(encode_avl_frame(CODEC_8, [record_of({1: 1}, layout)]))
    late = encode_avl_frame(CODEC_8, [record_of({1: 1}, layout, MAX_TIMESTAMP_MS + 1)])
    with pytest.raises(ImpossibleValueError):
        decode_data_frame(late)


def test_duplicate_ids_are_never_learned() -> None:
    # The general decoder keeps the last of two equal ids; no layout describes that.
    body = bytes.fromhex(
        "0801" "0000016b40d8ea30" "01" "0000000000000000" "0000" "0000" "00" "0000"
        "00" "02" "02" "0101" "0102" "00" "00" "00" "01"
    )
    frame = b"\x00" * 4 + len(body).to_bytes(4, "big") + body + b"\x00" * 4
    for _ in range(3):
        event = decode_data_frame(frame)
        assert isinstance(event, AvlFrame) and event.rows is None
        assert event.records[0].io == {1: 2}


def test_a_frame_from_rows_is_the_frame_it_stands_for() -> None:
    frame = encode_avl_frame(CODEC_8E, [record_of({239: 1, 66: 12000}, (1, 1, 0, 0, 0, 0))])
    decode_data_frame(frame)
    fast = decode_data_frame(frame)
    assert isinstance(fast, AvlFrame) and fast.rows is not None
    plain = general(frame)
    assert isinstance(plain, AvlFrame) and plain.rows is None
    assert fast == plain and repr(fast) == repr(plain)
    match fast:
        case AvlFrame(codec, records, raw):
            assert (codec, records, raw) == (CODEC_8E, plain.records, frame)
    with pytest.raises(AttributeError):
        fast.codec = 1  # type: ignore[misc]


def test_new_record_makes_the_records_the_dataclass_makes() -> None:
    made = new_record("teltonika", IMEI, "position", 1, 2, {"a": 1}, b"raw")
    assert made.__class__ is Record
    assert made == Record("teltonika", IMEI, "position", 1, 2, {"a": 1}, b"raw")
    assert (made.meta, made.offset, made._json, made._data_json) == (None, 0, None, None)
    with pytest.raises(AttributeError):
        made.source = "x"  # type: ignore[misc]


# -- UDP: a datagram's body is read the same way ------------------------------------------
def udp_general(datagram: bytes) -> UdpDatagram | tuple[type[Exception], str]:
    """What decode_udp_datagram returned before layouts were learned (or the error)."""
    layouts_before = dict(layouts._FRAME_PLANS)
    layouts._FRAME_PLANS.clear()
    try:
        return decode_udp_datagram(datagram)
    except TeltonikaDecodeError as exc:
        return type(exc), str(exc)
    finally:  # what this general reading learned is forgotten again
        layouts._FRAME_PLANS.clear()
        layouts._FRAME_PLANS.update(layouts_before)


def udp_decoded(datagram: bytes) -> UdpDatagram | tuple[type[Exception], str]:
    try:
        return decode_udp_datagram(datagram)
    except TeltonikaDecodeError as exc:
        return type(exc), str(exc)


def datagrams_of(codec: int) -> st.SearchStrategy[bytes]:
    return st.lists(avl_records(codec), min_size=1, max_size=4).map(
        lambda records: encode_udp_datagram(IMEI, codec, records)
    )


any_datagram = st.sampled_from((CODEC_8, CODEC_8E, CODEC_16)).flatmap(datagrams_of)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_datagram, st.data())
def test_a_learned_udp_datagram_and_a_changed_byte_read_as_the_general_decoder_reads_them(
    datagram: bytes, data: st.DataObject
) -> None:
    layouts.forget()
    expected = udp_general(datagram)
    assert isinstance(expected, UdpDatagram)
    assert decode_udp_datagram(datagram) == expected  # the general path, which learns
    fast = decode_udp_datagram(datagram)
    assert fast.frame.rows is not None  # generated records never repeat an id
    assert fast == expected
    assert fast.frame.count == len(expected.records)
    for table in TABLES:
        want = to_records(IMEI, expected.frame, NOW, table)
        for _ in range(HOT):
            got = to_records(IMEI, decode_udp_datagram(datagram).frame, NOW, table)
            assert as_json(got) == as_json(want)
    body = len(datagram) - len(fast.body)
    position = data.draw(st.integers(body + 1, len(datagram) - 2), label="position")
    value = data.draw(st.integers(0, 255), label="value")
    changed = datagram[:position] + bytes([value]) + datagram[position + 1 :]
    got_changed = udp_decoded(changed)
    assert got_changed == udp_general(changed)
    if isinstance(got_changed, UdpDatagram):
        for table in TABLES:
            plain = AvlFrame(got_changed.codec, got_changed.records, changed)
            assert as_json(to_records(IMEI, got_changed.frame, NOW, table)) == as_json(
                to_records(IMEI, plain, NOW, table)
            )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_frame, st.integers(0, MAX_TIMESTAMP_MS))
def test_a_hot_frame_plan_builds_its_records_in_one_call_as_the_rows_do(
    frame: bytes, received_at: int
) -> None:
    """Once a frame plan is hot, to_records takes its compiled whole-frame builder: the
    same Records (data key order included) as row by row and as the general path."""
    layouts.forget()
    decode_data_frame(frame)  # learned
    for table in TABLES:
        learned = decode_data_frame(frame)
        assert isinstance(learned, AvlFrame) and learned.rows is not None
        by_rows = AvlFrame.from_rows(frame[8], learned.rows, frame)
        want = general_records(by_rows, table, received_at)
        for _ in range(HOT):
            fast = decode_data_frame(frame)
            assert isinstance(fast, AvlFrame) and fast.learned is not None
            assert fast.count == len(want)
            got = to_records(IMEI, fast, received_at, table)
            assert as_json(got) == as_json(want)
            assert as_json(to_records(IMEI, by_rows, received_at, table)) == as_json(want)
        plan, _ = fast.learned
        assert (table if table is not None else IO_TABLES["fmb"]) in plan.builders
