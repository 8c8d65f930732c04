"""The store's batch statements keep every value exactly.

:meth:`RecordStore.prepare` binds only text and integers (data as text, "no meta" as '' and
"no offset" as 0, turned back into NULL by the statement), in multi-row statements of
several sizes, and folds device counters per batch. These tests compare what lands in the
file with the values as the plain per-row form bound them (data and meta as their JSON
bytes, None for no meta or offset), and the device counters with the plain per-record fold.
"""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetgate.records import Record, data_json
from fleetgate.store import BatchBuilder, RecordStore


def expected_row(record: Record) -> tuple[Any, ...]:
    """The row as the per-column INSERT stored it (data and meta as their JSON bytes)."""
    return (
        record.source,
        record.device_id,
        record.topic,
        record.created_at,
        record.received_at,
        data_json(record),
        orjson.dumps(record.meta) if record.meta else None,
        record.offset or None,
    )


def grouped(batch: list[Record]) -> list[Record]:
    """The batch in the order its rows are inserted: grouped by device (devices in order of
    their first record), each device's records in batch order."""
    by_device: dict[str, list[Record]] = {}
    for record in batch:
        by_device.setdefault(record.device_id, []).append(record)
    return [record for records in by_device.values() for record in records]


def expected_devices(batches: list[list[Record]]) -> dict[str, tuple[str, int, int, int]]:
    """device -> (source, first_seen, last_seen, count), folded record by record."""
    out: dict[str, tuple[str, int, int, int]] = {}
    for batch in batches:
        folded: dict[str, list[Any]] = {}
        for r in batch:
            entry = folded.get(r.device_id)
            if entry is None:
                folded[r.device_id] = [r.source, r.received_at, r.received_at, 1]
            else:
                entry[2] = max(entry[2], r.received_at)
                entry[3] += 1
        for device, (source, first, last, count) in folded.items():
            if device in out:
                _, old_first, old_last, old_count = out[device]
                out[device] = (source, old_first, max(old_last, last), old_count + count)
            else:
                out[device] = (source, first, last, count)
    return out


def stored(store: RecordStore) -> list[tuple[Any, ...]]:
    return store._writer.execute(
        "SELECT source, device_id, topic, created_at, received_at, CAST(data AS BLOB), "
        "CAST(meta AS BLOB), seq FROM records ORDER BY id"
    ).fetchall()


def stored_devices(store: RecordStore) -> dict[str, tuple[str, int, int, int]]:
    rows = store._writer.execute(
        "SELECT device_id, source, first_seen, last_seen, record_count FROM devices"
    ).fetchall()
    return {device: tuple(rest) for device, *rest in rows}


# Any text SQLite can hold (no lone surrogates: neither form can encode those), with quotes,
# escapes, control characters, NUL and non-ASCII.
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=10) | st.sampled_from(
    ['"', "\\", "\n", "\x00", "a\x00b", "\u2028", "é", "356307040000000"]
)
ints = st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
records = st.builds(
    Record,
    source=st.sampled_from(["teltonika", "tesla"]) | texts,
    device_id=st.sampled_from(["a", "b", "c"]) | texts,
    topic=texts,
    created_at=ints,
    received_at=ints,
    data=st.dictionaries(texts, json_values, max_size=4),
    meta=st.none() | st.dictionaries(texts, texts, max_size=2),
    offset=st.integers(0, 2**63 - 1),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(records, max_size=12), max_size=4))
def test_every_value_lands_as_the_per_column_insert_stored_it(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Record]]
) -> None:
    store = RecordStore(tmp_path_factory.mktemp("store") / "db.sqlite")
    try:
        for batch in batches:
            store.write(batch)
        assert stored(store) == [expected_row(r) for batch in batches for r in grouped(batch)]
        assert stored_devices(store) == expected_devices(batches)
    finally:
        store.close()


def test_data_is_stored_as_text_the_json_functions_read(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store.write(
        [Record("teltonika", "a", "position", 5, 6, {"latitude": 54.5, "longitude": 25.25})]
    )
    assert store._writer.execute("SELECT typeof(data), typeof(meta) FROM records").fetchall() == [
        ("text", "null")
    ]
    assert store.positions(["a"]) == {"a": (54.5, 25.25, 5)}
    store.close()


def test_devices_take_the_latest_receive_time_even_out_of_order(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store.write([Record("s", "a", "t", 1, received, {}) for received in (300, 100, 200)])
    [device] = store.devices()
    assert (device.first_seen, device.last_seen, device.record_count) == (300, 300, 3)
    store.close()


def test_an_empty_batch_writes_nothing(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store.write([])
    assert store.count() == 0 and store.cursor() is None
    store.close()


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1])
def test_a_time_sqlite_cannot_hold_is_refused(tmp_path: Path, value: int) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    with pytest.raises((TypeError, OverflowError)):
        store.write([Record("s", "a", "t", value, 1, {})])
    assert store.count() == 0
    store.close()


def test_a_failed_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store._writer.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    with pytest.raises(sqlite3.DataError):
        store.write([Record("s", "a", "t", 1, 1, {"x": "y" * 2000}, offset=9)])
    assert store.count() == 0 and store.devices() == [] and store.cursor() is None
    store.close()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.lists(records, max_size=20),
    cuts=st.lists(st.integers(0, 20), max_size=4),
)
def test_a_batch_built_in_slices_stores_what_the_batch_built_at_once_does(
    tmp_path_factory: pytest.TempPathFactory, batch: list[Record], cuts: list[int]
) -> None:
    builder = BatchBuilder()
    bounds = [0, *sorted(min(cut, len(batch)) for cut in cuts), len(batch)]
    for start, end in itertools.pairwise(bounds):
        builder.add(batch[start:end])
    directory = tmp_path_factory.mktemp("store")
    sliced, whole = RecordStore(directory / "sliced.db"), RecordStore(directory / "whole.db")
    try:
        sliced.commit(builder.finish())
        whole.commit(RecordStore.prepare(batch))
        assert stored(sliced) == stored(whole) == [expected_row(r) for r in grouped(batch)]
        assert stored_devices(sliced) == stored_devices(whole)
        assert sliced.cursor() == whole.cursor()
    finally:
        sliced.close()
        whole.close()


async def test_the_sink_stores_a_batch_larger_than_a_slice(tmp_path: Path) -> None:
    from fleetgate.sinks.base import SinkContext
    from fleetgate.sinks.sqlite import PREPARE_SLICE, SqliteSink

    store = RecordStore(tmp_path / "db.sqlite")
    sink = SqliteSink({}, SinkContext(), store=store)
    count = 2 * PREPARE_SLICE + 7
    batch = [
        Record(
            "s",
            "ab"[i % 2],
            "t",
            i,
            1000 + i,
            {"i": i},
            meta={"m": "x"} if i == 3 else None,
            offset=i + 1,
        )
        for i in range(count)
    ]
    await sink.publish(batch)
    assert store.count() == count
    assert store.cursor() == count
    devices = {d.device_id: d for d in store.devices()}
    assert devices["a"].record_count + devices["b"].record_count == count
    assert devices["b"].last_seen == 1000 + count - 1 - (count % 2 == 1)
    assert [r["data"]["i"] for r in store.records("a", limit=3)] == [
        count - 1,
        count - 3,
        count - 5,
    ]
    assert stored(store) == [expected_row(r) for r in grouped(batch)]
    await sink.close()


def expected_groups(batch: list[Record]) -> list[tuple[str, int, int, int, bool]]:
    """Per device, in order of its first record: (device, rows, oldest, newest, ordered),
    folded record by record."""
    times: dict[str, list[int]] = {}
    for record in batch:
        times.setdefault(record.device_id, []).append(record.created_at)
    return [
        (device, len(t), min(t), max(t), all(a <= b for a, b in itertools.pairwise(t)))
        for device, t in times.items()
    ]


# Few devices and times that often go back: the column-wise build's rare branches.
times = st.integers(-3, 3) | ints
small_batches = st.lists(
    st.builds(
        Record,
        source=st.sampled_from(["teltonika", "tesla"]),
        device_id=st.sampled_from(["a", "b", "c"]),
        topic=st.just("t"),
        created_at=times,
        received_at=times,
        data=st.just({}),
        offset=st.integers(0, 5),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(batch=small_batches, cut=st.integers(0, 30))
def test_device_groups_and_counters_are_the_per_record_fold(batch: list[Record], cut: int) -> None:
    builder = BatchBuilder()
    builder.add(batch[:cut])
    builder.add(batch[cut:])
    prepared = builder.finish()
    assert [tuple(group) for group in prepared.groups] == expected_groups(batch)
    devices = [tuple(prepared.devices[i : i + 5]) for i in range(0, len(prepared.devices), 5)]
    assert {device: tuple(rest) for device, *rest in devices} == expected_devices([batch])
    assert [device for device, *_ in devices] == list(dict.fromkeys(r.device_id for r in batch))
