"""The record JSON built from cached pieces is byte for byte the serialised dict form.

``record_json`` assembles the JSON from a cached head, cached minute texts and ``data_json``;
consumers depend on its exact bytes, so it is checked against the plain form it replaced:
``orjson.dumps(record_dict(record))`` (one dict, two formatted times, one serialisation).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate import records
from fleetgate.records import Record, record_dict, record_json


def reference_json(record: Record) -> bytes:
    """The JSON form as it was first written: the dict form, serialised by orjson."""
    return orjson.dumps(record_dict(record))


def same_outcome(record: Record) -> None:
    """record_json gives the reference's bytes, or fails where the reference fails."""
    try:
        expected = reference_json(record)
    except Exception as exc:  # the type is what is compared
        with pytest.raises(type(exc)):
            record_json(record)
        return
    assert record_json(record) == expected


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Names with quotes, escapes, control characters, non-ASCII and lone surrogates (which
# orjson refuses: both forms must refuse them).
names = (
    st.text(max_size=12)
    | st.text(st.characters(exclude_categories=()), max_size=6)
    | st.sampled_from(['"', "\\", "\n", "\x00", "\u2028", "é", "\ud800", "a\udfffb"])
)
# Whole 64-bit range: device clocks can say anything; times outside years 1..9999 clamp.
times = (
    st.integers(-(2**63), 2**63 - 1)
    | st.integers(records.MIN_TIME_MS - 2000, records.MIN_TIME_MS + 2000)
    | st.integers(records.MAX_TIME_MS - 2000, records.MAX_TIME_MS + 2000)
    | st.integers(-(10**13), 10**13)
)


@settings(max_examples=500)
@given(
    source=names,
    device_id=names,
    topic=names,
    created=times,
    received=times,
    data=st.dictionaries(st.text(max_size=8), json_values, max_size=6),
    meta=st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    offset=st.integers(0, 2**40),
)
def test_record_json_equals_the_serialised_dict_form(
    source: str,
    device_id: str,
    topic: str,
    created: int,
    received: int,
    data: dict[str, Any],
    meta: dict[str, str] | None,
    offset: int,
) -> None:
    record = Record(source, device_id, topic, created, received, data, b"raw", meta, offset)
    same_outcome(record)
    # Again with a fresh record: this time the head and minute texts come from the caches.
    same_outcome(Record(source, device_id, topic, created, received, data, b"raw", meta))


@given(st.lists(st.integers(-(2**45), 2**45), min_size=1, max_size=50))
def test_records_of_one_device_share_cached_pieces_and_keep_their_own_times(
    times_ms: list[int],
) -> None:
    for created in times_ms:
        record = Record("teltonika", "356307042441013", "avl", created, created + 120, {})
        same_outcome(record)


def test_caches_stay_exact_and_bounded_past_their_size() -> None:
    # More distinct minutes and heads than the caches hold: they are emptied, not grown.
    for i in range(3 * records._HEADS_MAX):
        minute_ms = 1_717_171_717_000 + i * 60_000 + i % 1000
        record = Record("teltonika", f"dev{i}", "avl", minute_ms, minute_ms + 61_001, {"i": i})
        same_outcome(record)
    assert len(records._minute_texts) <= records._MINUTES_MAX
    assert len(records._json_heads) <= records._HEADS_MAX


class Name(str):
    """A str subclass: orjson writes its text like a plain str."""

    __slots__ = ()


@pytest.mark.parametrize(
    ("first", "second"),
    [(1, True), (True, 1.0), ("1", 1), (Name("teltonika"), "teltonika")],
)
def test_head_cache_never_mixes_values_that_compare_equal(first: Any, second: Any) -> None:
    # Not str as the type says, but the form must still be what orjson writes for them.
    for source in (first, second, first):
        same_outcome(Record(source, "d", "t", 0, 0, {}))


def test_json_form_is_the_documented_text() -> None:
    record = Record(
        "teltonika", "356307042441013", "avl", 1_560_161_086_000, 1_560_161_086_123, {"a": 1}
    )
    assert record_json(record) == (
        b'{"source":"teltonika","device_id":"356307042441013","topic":"avl",'
        b'"created_at":"2019-06-10T10:04:46.000Z","received_at":"2019-06-10T10:04:46.123Z",'
        b'"data":{"a":1}}'
    )


# Values that put ``},{`` inside an element: in a string, in a list of dicts, in a key.
tricky_values = json_values | st.sampled_from(
    ["},{", "a},{b", [{"a": 1}, {"b": 2}], [{}, {}], {"x": [{"y": "},{"}]}]
)
frame_data = st.dictionaries(st.text(max_size=8) | st.just("},{"), tricky_values, max_size=4)


@settings(max_examples=500)
@given(st.lists(frame_data | st.sampled_from([{}, {"},{": "},{"}]), min_size=1, max_size=8))
def test_data_jsons_of_a_frame_equal_each_records_own_serialisation(
    datas: list[dict[str, Any]],
) -> None:
    frame = [Record("teltonika", "d", "position", 1, 2, data) for data in datas]
    try:
        expected = [orjson.dumps(data) for data in datas]
    except Exception as exc:  # data orjson refuses: refused the same way, per record
        with pytest.raises(type(exc)):
            records.data_jsons(frame)
        return
    assert records.data_jsons(frame) == expected
    # Cached on each record, as data_json caches it, and then read back from the cache.
    assert [records.data_json(record) for record in frame] == expected
    assert records.data_jsons(frame) == expected


def test_data_jsons_fall_back_for_a_mapping_that_is_not_a_dict() -> None:
    from types import MappingProxyType

    frame = [
        Record("teltonika", "d", "position", 1, 2, {"a": "},{"}),
        Record("teltonika", "d", "position", 1, 2, MappingProxyType({"b": 1})),
    ]
    with pytest.raises(TypeError):  # what data_json says of it alone
        records.data_jsons(frame)
    assert records.data_json(frame[0]) == b'{"a":"},{"}'


def test_data_jsons_pieces_are_exact_copies_not_views_of_one_buffer() -> None:
    frame = [Record("teltonika", "d", "position", 1, 2, {"i": i}) for i in range(10)]
    texts = records.data_jsons(frame)
    assert texts == [b'{"i":%d}' % i for i in range(10)]
    assert all(type(text) is bytes for text in texts)


# Runs of times that stay in one minute, cross into the next, jump back, leave years
# 1..9999 and come back: the minute windows move with them and never give a stale text.
window_runs = st.lists(
    st.tuples(
        st.integers(-(2**45), 2**45) | times,
        st.lists(st.integers(-61_000, 61_000), max_size=6),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300)
@given(window_runs, st.integers(-200_000, 200_000))
def test_minute_windows_follow_created_and_received_times(
    runs: list[tuple[int, list[int]]], lag: int
) -> None:
    for base, steps in runs:
        created = base
        for step in [0, *steps]:
            created += step
            same_outcome(Record("teltonika", "356307042441013", "avl", created, created + lag, {}))


def test_minute_windows_at_the_edges_of_the_years() -> None:
    edges = [records.MIN_TIME_MS, records.MAX_TIME_MS]
    for edge in edges:
        for delta in (-60_001, -60_000, -1, 0, 1, 59_999, 60_000):
            for other in (edge + delta, 0, edge - delta):
                same_outcome(Record("s", "d", "t", edge + delta, other, {}))
                same_outcome(Record("s", "d", "t", other, edge + delta, {}))
