"""A batch's record JSON made in one loop is byte for byte each record's own JSON form.

``record_jsons`` (and ``wire_payloads`` on top of it) reuse a head while records share
their source, device and topic *objects*, and the minute windows while their times stay in
one minute; both shortcuts must give ``orjson.dumps(record_dict(record))`` for every
record, whatever the batch mixes: equal names in distinct objects, times that jump across
minutes and out of years 1..9999, records whose JSON or data JSON is cached already.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate import records
from fleetgate.forms import register_wire_form, wire_payload, wire_payloads
from fleetgate.records import Record, record_dict, record_json, record_jsons

names = (
    st.text(max_size=12)
    | st.text(st.characters(exclude_categories=()), max_size=6)
    | st.sampled_from(["teltonika", "avl", '"', "\\", "\n", "\x00", "\u2028", "é", "\ud800"])
)
times = (
    st.integers(-(2**63), 2**63 - 1)
    | st.integers(records.MIN_TIME_MS - 2000, records.MIN_TIME_MS + 2000)
    | st.integers(records.MAX_TIME_MS - 2000, records.MAX_TIME_MS + 2000)
    | st.integers(-(10**13), 10**13)
    # A minute's and a year's last and first milliseconds, in the stream's own era.
    | st.sampled_from([1_704_067_199_999, 1_704_067_200_000, 1_717_171_679_999, 1_717_171_680_000])
)
values = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | names
datas = st.dictionaries(names, values | st.lists(values, max_size=3), max_size=4)


def fresh(text: str) -> str:
    """An equal string that is another object when CPython allows (not for '' or 1 char)."""
    return "".join(list(text))


@st.composite
def batches(draw: st.DrawFn) -> list[Record]:
    """Records from a few names (shared objects, or equal copies), with runs of times
    stepping within and across minutes, some with their JSON or data JSON cached."""
    # Each name from its own small pool: runs where only one of the three changes.
    pools = [draw(st.lists(names, min_size=1, max_size=3)) for _ in range(3)]
    batch: list[Record] = []
    created = draw(times)
    received = draw(times)
    for _ in range(draw(st.integers(1, 12))):
        source, device, topic = (pool[draw(st.integers(0, len(pool) - 1))] for pool in pools)
        if draw(st.booleans()):
            source, device, topic = fresh(source), fresh(device), fresh(topic)
        if draw(st.booleans()):
            created = draw(times)
        else:
            created += draw(st.integers(-61_000, 61_000))
        received = draw(times) if draw(st.integers(0, 4)) == 0 else received + draw(
            st.integers(0, 1500)
        )
        record = Record(source, device, topic, created, received, draw(datas))
        cached = draw(st.sampled_from(["none", "data", "json"]))
        try:
            if cached == "data":
                records.data_json(record)
            elif cached == "json":
                record_json(record)
        except (TypeError, OverflowError):
            pass  # refused; the batch must be refused the same way
        batch.append(record)
    return batch


def reference(record: Record) -> bytes:
    return orjson.dumps(record_dict(record))


def expected_or_error(batch: list[Record]) -> list[bytes] | type[Exception]:
    try:
        return [reference(record) for record in batch]
    except (TypeError, OverflowError) as exc:
        return type(exc)


@settings(max_examples=600)
@given(batches())
def test_record_jsons_equal_each_records_serialised_dict_form(batch: list[Record]) -> None:
    expected = expected_or_error(batch)
    if not isinstance(expected, list):
        with pytest.raises((TypeError, OverflowError)):
            record_jsons(batch)
        return
    texts = record_jsons(batch)
    assert texts == expected
    # Cached on each record, as record_json caches it.
    assert all(record_json(record) is text for record, text in zip(batch, texts, strict=True))
    # A fresh copy of the batch, now that heads and minutes are in the module's caches.
    copies = [
        Record(r.source, r.device_id, r.topic, r.created_at, r.received_at, r.data)
        for r in batch
    ]
    assert record_jsons(copies) == expected


@given(st.lists(st.tuples(st.integers(-(2**45), 2**45), st.integers(0, 3)), max_size=30))
def test_record_jsons_of_one_device_across_minutes(steps: list[tuple[int, int]]) -> None:
    # A tracker's frames: one head object, times crossing minute windows both ways.
    source, device, topic = "teltonika", "356307042441013", "avl"
    batch = [
        Record(source, device, topic, at, at + lag * 30_000, {"i": i})
        for i, (at, lag) in enumerate(steps)
    ]
    assert record_jsons(batch) == [reference(record) for record in batch]


def test_record_jsons_of_nothing() -> None:
    assert record_jsons([]) == []
    assert wire_payloads([]) == []


def test_record_jsons_at_the_edges_of_the_years() -> None:
    batch = [
        Record("s", "d", "t", edge + delta, other, {})
        for edge in (records.MIN_TIME_MS, records.MAX_TIME_MS)
        for delta in (-60_001, -60_000, -1, 0, 1, 59_999, 60_000, 2**40)
        for other in (edge + delta, 0, edge - delta)
    ]
    assert record_jsons(batch) == [reference(record) for record in batch]


class _Name(str):
    __slots__ = ()


def test_a_head_is_reused_only_for_the_same_objects() -> None:
    # Values that compare equal but serialise differently never share a head.
    odd: list[Any] = [1, True, 1.0, "1", _Name("1"), "1"]
    batch = [Record(value, "d", "t", 0, 0, {}) for value in odd]
    for record, value in zip(batch, odd, strict=True):
        try:
            expected = reference(record)
        except TypeError:
            continue
        assert record_jsons([record]) == [expected], value
    assert len(record_jsons(batch[3:])) == 3


@settings(max_examples=200)
@given(batches(), st.lists(st.booleans(), min_size=12, max_size=12), st.booleans())
def test_wire_payloads_equal_wire_payload_of_each_record(
    batch: list[Record], formed: list[bool], decoded: bool
) -> None:
    # Some records from a source with its own wire form (as Tesla's), the rest JSON.
    register_wire_form("formed-test", lambda record, d: b"formed:%d:%d" % (d, record.created_at))
    mixed = [
        Record("formed-test", r.device_id, r.topic, r.created_at, r.received_at, r.data)
        if flag
        else r
        for r, flag in zip(batch, formed, strict=False)
    ]
    try:
        expected = [wire_payload(record, decoded) for record in mixed]
    except (TypeError, OverflowError):
        return  # a record no form can write (refused the same way: tested above)
    assert wire_payloads(mixed, decoded) == expected
