"""Reads through spans answer exactly what the per-record index answered.

The store finds a device's rows through ``spans`` (id ranges per device) instead of an
index on every row. These tests write random batches (a few devices, out-of-order and equal
device times, one or two store files) with tiny span limits, so that spans are extended,
started anew, unordered and compacted, and compare every read API with the old queries'
semantics computed in Python over the files' rows: newest first by ``(created_at, id)``,
each file cut to the limit on its own, pages ordered by ``(created_at, file, id)``.
Stores made before spans (the old index, no spans table) are migrated when opened.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetgate import store as store_module
from fleetgate import store_spans
from fleetgate.records import Record
from fleetgate.store import PageCursor, RecordStore, shard_path

DEVICES = ["a", "b", "c", "d"]

positions = st.sampled_from(
    [None, (0, 0), (54.5, 25.25), (54.6, 0), ("1.5", 2), (1.5, None), (0.0, 0)]
)


@st.composite
def records(draw: st.DrawFn) -> Record:
    position = draw(positions)
    data: dict[str, Any] = {"n": draw(st.integers(0, 1000))}
    if position is not None:
        data["latitude"], data["longitude"] = position
    if draw(st.booleans()) and position is not None:  # Tesla's form
        data = {"Location": {"latitude": position[0], "longitude": position[1]}}
    return Record(
        "teltonika",
        draw(st.sampled_from(DEVICES)),
        draw(st.sampled_from(["position", "event"])),
        draw(st.integers(0, 60)),
        draw(st.integers(0, 100)),
        data,
        meta=draw(st.none() | st.just({"m": "x"})),
    )


windows = st.tuples(st.none() | st.integers(-5, 65), st.none() | st.integers(-5, 65))


@contextmanager
def tiny_spans(width: int = 6, max_ids: int = 9, max_runs: int = 3) -> Iterator[None]:
    """Spans ``width`` ms and ``max_ids`` ids wide at most, of ``max_runs`` runs at most,
    compacted at 4 per device, positions looked for among the newest 3 records: every rule
    comes into play within a few batches."""
    with (
        mock.patch.object(store_spans, "SPAN_WIDTH_MS", width),
        mock.patch.object(store_spans, "SPAN_MAX_IDS", max_ids),
        mock.patch.object(store_spans, "MAX_RUNS", max_runs),
        mock.patch.object(store_spans, "MAX_SPANS_PER_DEVICE", 4),
        # Short runs read together in chunks of 2, 4, ... ids, fetched 1, 2, 4, ... rows.
        mock.patch.object(store_spans, "_CHUNK_FIRST", 2),
        mock.patch.object(store_spans, "_FETCH_FIRST", 1),
        mock.patch.object(store_module, "POSITION_LOOKBACK", 3),
    ):
        yield


# -- the old queries' semantics over the files' rows --------------------------------------
Row = tuple[int, str, str, str, int, int, str]  # id, source, device, topic, created, received, data


def file_rows(path: Path) -> list[Row]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT id, source, device_id, topic, created_at, received_at, data FROM records"
        ).fetchall()
    connection.close()
    return rows


def newest_first(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda row: (row[4], row[0]), reverse=True)


def as_json(row: Row) -> dict[str, Any]:
    from fleetgate.records import format_rfc3339_ms

    return {
        "source": row[1],
        "device_id": row[2],
        "topic": row[3],
        "created_at": format_rfc3339_ms(row[4]),
        "received_at": format_rfc3339_ms(row[5]),
        "data": orjson.loads(row[6]),
    }


def matching(rows: list[Row], device: str, since: int | None, until: int | None) -> list[Row]:
    return [
        row
        for row in rows
        if row[2] == device
        and (since is None or row[4] >= since)
        and (until is None or row[4] <= until)
    ]


def lat_lon(row: Row) -> tuple[Any, Any]:
    data = orjson.loads(row[6])
    location = data.get("Location") if isinstance(data.get("Location"), dict) else {}
    lat = data.get("latitude")
    lon = data.get("longitude")
    # coalesce(): a JSON null is SQL NULL, so the Location's is taken.
    return (
        location.get("latitude") if lat is None else lat,
        location.get("longitude") if lon is None else lon,
    )


def has_position(row: Row) -> bool:
    lat, lon = lat_lon(row)
    return lat is not None and lon is not None and not (lat == 0 and lon == 0)


def merged(parts: list[list[Row]], limit: int) -> list[Row]:
    """The files' parts concatenated, then the newest ``limit`` by (created_at, id)."""
    rows = [row for part in parts for row in part]
    rows.sort(key=lambda row: (row[4], row[0]), reverse=True)
    return rows[:limit]


def expected_records(
    files: list[list[Row]], device: str, since: int | None, until: int | None, limit: int
) -> list[dict[str, Any]]:
    parts = [newest_first(matching(rows, device, since, until))[:limit] for rows in files]
    return [as_json(row) for row in merged(parts, limit)]


def expected_pages(
    files: list[list[Row]],
    device: str,
    since: int | None,
    until: int | None,
    topic: str | None,
    after: PageCursor | None = None,
) -> list[dict[str, Any]]:
    rows = [
        (row, shard)
        for shard, file in enumerate(files)
        for row in matching(file, device, since, until)
        if (topic is None or row[3] == topic)
        and (
            after is None or (row[4], shard, row[0]) < (after.created_at, after.shard, after.row_id)
        )
    ]
    rows.sort(key=lambda item: (item[0][4], item[1], item[0][0]), reverse=True)
    return [as_json(row) for row, _ in rows]


def expected_track(
    files: list[list[Row]], device: str, since: int | None, until: int | None, limit: int
) -> list[tuple[float, float, int]]:
    parts = [
        newest_first([row for row in matching(rows, device, since, until) if has_position(row)])[
            :limit
        ]
        for rows in files
    ]
    points = []
    for row in reversed(merged(parts, limit)):
        lat, lon = lat_lon(row)
        points.append((float(lat), float(lon), row[4]))
    return points


def expected_position(files: list[list[Row]], device: str) -> tuple[float, float, int] | None:
    lookback = store_module.POSITION_LOOKBACK
    parts = [
        [
            row
            for row in newest_first(matching(rows, device, None, None))[:lookback]
            if has_position(row)
        ]
        for rows in files
    ]
    newest = merged(parts, 1)
    if not newest:
        return None
    lat, lon = lat_lon(newest[0])
    return (float(lat), float(lon), newest[0][4])


def all_pages(
    store: RecordStore,
    device: str,
    since: int | None,
    until: int | None,
    topic: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor: PageCursor | None = None
    for _ in range(1000):
        page, cursor = store.records_page(
            device, since=since, until=until, topic=topic, limit=limit, after=cursor
        )
        assert len(page) <= limit
        seen += page
        if cursor is None:
            return seen
        assert len(page) == limit
        cursor = PageCursor.decode(cursor.encode())
    raise AssertionError("pages never ended")


def check_runs(connection: sqlite3.Connection) -> None:
    """Every span's runs are exactly its device's ids in its id range (merged when
    adjacent), at most MAX_RUNS of them unless compacted."""
    latest = dict(
        connection.execute("SELECT device_id, max(first_id) FROM spans GROUP BY device_id")
    )
    device_ids: dict[str, list[int]] = {}
    for row_id, device in connection.execute("SELECT id, device_id FROM records ORDER BY id"):
        device_ids.setdefault(device, []).append(row_id)
    for device, first, last, blob in connection.execute(
        "SELECT device_id, first_id, last_id, runs FROM spans"
    ):
        runs = store_spans.decode_runs(blob, first)
        ids = [i for i in device_ids[device] if first <= i <= last]
        assert [i for start, end in runs for i in range(start, end + 1)] == ids
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(runs))
        assert runs[0][0] == first and runs[-1][1] == last
        if latest[device] == first:  # compaction merges the older spans only
            assert len(runs) <= store_spans.MAX_RUNS


def check_reads(
    store: RecordStore, paths: list[Path], data: st.DataObject, queries: int = 6
) -> None:
    files = [file_rows(path) for path in paths]
    for _ in range(queries):
        device = data.draw(st.sampled_from([*DEVICES, "nobody"]))
        since, until = data.draw(windows)
        limit = data.draw(st.integers(1, 12))
        assert store.records(device, since, until, limit) == expected_records(
            files, device, since, until, limit
        )
        topic = data.draw(st.sampled_from([None, "position", "event"]))
        assert all_pages(store, device, since, until, topic, limit) == expected_pages(
            files, device, since, until, topic
        )
        # A cursor made up by a client (any time, file and id) reads as the old query did.
        after = PageCursor(
            data.draw(st.integers(-1, 62)),
            data.draw(st.integers(0, 2)),
            data.draw(st.integers(0, 90)),
        )
        page, _ = store.records_page(device, since=since, until=until, limit=limit, after=after)
        assert page == expected_pages(files, device, since, until, None, after)[:limit]
        assert store.track(device, since, until, limit) == expected_track(
            files, device, since, until, limit
        )
    expected = {
        device: position
        for device in DEVICES
        if (position := expected_position(files, device)) is not None
    }
    assert store.positions([*DEVICES, "nobody"]) == expected


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.tuples(st.integers(0, 1), st.lists(records(), max_size=14)), min_size=1, max_size=6
    ),
    shards=st.integers(1, 2),
    limits=st.sampled_from([(6, 9, 3), (6, 40, 64), (60, 40, 2), (60, 40, 1), (60, 60, 64)]),
    data=st.data(),
)
def test_every_read_answers_what_the_per_record_index_did(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[int, list[Record]]],
    shards: int,
    limits: tuple[int, int, int],
    data: st.DataObject,
) -> None:
    base = tmp_path_factory.mktemp("store") / "fleetgate.db"
    paths = [shard_path(base, index) for index in range(shards)]
    with tiny_spans(*limits):
        writers = [RecordStore(path) for path in paths]
        reader = RecordStore(base, read_shards=True) if shards > 1 else writers[0]
        try:
            for number, (shard, batch) in enumerate(batches):
                writers[shard % shards].write(batch)
                if number % 2:  # reads between writes too
                    check_reads(reader, paths, data, queries=2)
            check_reads(reader, paths, data)
            for writer in writers:
                counts = writer._writer.execute(
                    "SELECT count(*) FROM spans GROUP BY device_id"
                ).fetchall()
                assert all(count < store_spans.MAX_SPANS_PER_DEVICE for (count,) in counts)
                check_runs(writer._writer)
        finally:
            for writer in writers:
                writer.close()
            if reader not in writers:
                reader.close()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(records(), max_size=14), min_size=1, max_size=5), data=st.data())
def test_a_store_reopened_answers_the_same_and_goes_on_extending_its_spans(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Record]], data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("store") / "fleetgate.db"
    with tiny_spans():
        for batch in batches:
            store = RecordStore(path)  # each batch from a new writer: spans loaded at open
            try:
                store.write(batch)
            finally:
                store.close()
        store = RecordStore(path)
        try:
            check_reads(store, [path], data)
        finally:
            store.close()


# -- stores made before spans -----------------------------------------------------------------
OLD_SCHEMA = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, device_id TEXT NOT NULL,
    topic TEXT NOT NULL, created_at INTEGER NOT NULL, received_at INTEGER NOT NULL,
    data TEXT NOT NULL, meta TEXT, seq INTEGER
);
CREATE INDEX records_by_device_time ON records (device_id, created_at, id);
CREATE TABLE cursors (consumer TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY, source TEXT NOT NULL, first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL, record_count INTEGER NOT NULL
);
"""


def make_old_store(path: Path, records: list[Record]) -> None:
    """A file as the store wrote it before spans: rows in arrival order, the index."""
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SCHEMA)
        connection.executemany(
            "INSERT INTO records (source, device_id, topic, created_at, received_at, data, "
            "meta, seq) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
            [
                (
                    r.source,
                    r.device_id,
                    r.topic,
                    r.created_at,
                    r.received_at,
                    orjson.dumps(r.data).decode(),
                    r.offset or None,
                )
                for r in records
            ],
        )
        connection.executemany(
            "INSERT INTO devices VALUES (?, 'teltonika', 0, 0, 0) ON CONFLICT DO NOTHING",
            [(r.device_id,) for r in records],
        )
        connection.execute("INSERT INTO cursors VALUES ('sqlite', ?)", (len(records),))
    connection.close()


def indexes(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        names = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"
            )
        ]
    connection.close()
    return sorted(names)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    old=st.lists(records(), max_size=40),
    new=st.lists(records(), max_size=14),
    limits=st.sampled_from([(6, 9, 3), (60, 40, 2), (60, 60, 64)]),
    data=st.data(),
)
def test_a_store_made_before_spans_is_migrated_when_opened(
    tmp_path_factory: pytest.TempPathFactory,
    old: list[Record],
    new: list[Record],
    limits: tuple[int, int, int],
    data: st.DataObject,
) -> None:
    path = tmp_path_factory.mktemp("store") / "fleetgate.db"
    make_old_store(path, old)
    with tiny_spans(*limits):
        store = RecordStore(path)
        try:
            assert indexes(path) == ["spans_by_device"]
            check_runs(store._writer)
            check_reads(store, [path], data)
            assert store.cursor() == len(old)
            store.write(new)
            check_reads(store, [path], data)
        finally:
            store.close()


def test_an_old_shard_no_writer_opens_is_migrated_by_the_reader(tmp_path: Path) -> None:
    base = tmp_path / "fleetgate.db"
    writer = RecordStore(base)
    writer.write([Record("teltonika", "a", "position", 5, 5, {"n": 5})])
    old = shard_path(base, 1)  # an earlier run's second worker
    make_old_store(old, [Record("teltonika", "a", "position", t, t, {"n": t}) for t in (1, 9, 3)])
    reader = RecordStore(base, read_shards=True)
    try:
        assert [r["data"]["n"] for r in reader.records("a")] == [9, 5, 3, 1]
        assert indexes(old) == ["spans_by_device"]
    finally:
        reader.close()
        writer.close()


def test_rows_an_older_writer_added_after_the_spans_are_covered_when_reopened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fleetgate.db"
    store = RecordStore(path)
    store.write([Record("teltonika", "a", "position", 1, 1, {"n": 1})])
    store.close()
    with sqlite3.connect(path) as connection:  # a downgraded server: rows, no spans
        connection.execute(
            "INSERT INTO records (source, device_id, topic, created_at, received_at, data) "
            "VALUES ('teltonika', 'a', 'position', 2, 2, '{\"n\":2}')"
        )
    connection.close()
    store = RecordStore(path)
    try:
        assert [r["data"]["n"] for r in store.records("a")] == [2, 1]
    finally:
        store.close()


def test_a_migration_that_fails_leaves_the_old_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.db"
    make_old_store(path, [Record("teltonika", "a", "position", 1, 1, {})])
    with (
        mock.patch.object(store_spans, "compact", side_effect=RuntimeError("boom")),
        mock.patch.object(store_spans, "MAX_SPANS_PER_DEVICE", 1),
        pytest.raises(RuntimeError),
    ):
        RecordStore(path)
    assert "records_by_device_time" in indexes(path)
    store = RecordStore(path)
    try:
        assert [r["data"] for r in store.records("a")] == [{}]
    finally:
        store.close()


# -- runs -------------------------------------------------------------------------------------
@given(
    runs=st.lists(st.tuples(st.integers(1, 20_000), st.integers(0, 300)), min_size=1, max_size=40),
    first=st.integers(1, 2**40),
)
def test_runs_encode_and_decode_and_a_span_extended_run_by_run_encodes_the_same(
    runs: list[tuple[int, int]], first: int
) -> None:
    ranges: list[tuple[int, int]] = []
    for gap, length in runs:
        start = ranges[-1][1] + 1 + gap if ranges else first
        ranges.append((start, start + length))
    blob = store_spans.encode_runs(ranges, first)
    assert store_spans.decode_runs(blob, first) == ranges
    span = store_spans.Span.new(1, "a", first, ranges[0][1], oldest=0, newest=0, ordered=True)
    for low, high in ranges[1:]:
        span = span.extended(low, high, 0, 0, True)
    assert span.runs() == blob  # no run of these follows the previous one directly
    stored = store_spans.Span.stored(
        1, "a", first, span.last_id, oldest=0, newest=0, ordered=True, runs=blob
    )
    assert stored == span


def test_runs_that_follow_each_other_are_one_run() -> None:
    span = store_spans.Span.new(1, "a", 10, 12, oldest=0, newest=0, ordered=True)
    span = span.extended(13, 20, 0, 0, True)
    assert store_spans.decode_runs(span.runs() or b"", 10) == [(10, 20)]
    assert span.extended(25, 25, 0, 0, True).runs() == store_spans.encode_runs(
        [(10, 20), (25, 25)], 10
    )


def without_runs(path: Path, how: str, nulled: list[bool]) -> None:
    """``path``'s spans as a version without runs left them: no ``runs`` column ("column"),
    or some spans' runs NULL ("null")."""
    with sqlite3.connect(path) as connection:
        if how == "column":
            connection.execute("ALTER TABLE spans DROP COLUMN runs")
        else:
            ids = [span_id for (span_id,) in connection.execute("SELECT id FROM spans")]
            connection.executemany(
                "UPDATE spans SET runs = NULL WHERE id = ?",
                [(span_id,) for span_id, null in zip(ids, nulled, strict=False) if null],
            )
    connection.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.lists(records(), max_size=14), min_size=1, max_size=5),
    how=st.sampled_from(["column", "null"]),
    nulled=st.lists(st.booleans(), min_size=30, max_size=30),
    data=st.data(),
)
def test_spans_without_runs_are_read_by_id_range_and_rebuilt_by_the_writer(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[Record]],
    how: str,
    nulled: list[bool],
    data: st.DataObject,
) -> None:
    base = tmp_path_factory.mktemp("store") / "fleetgate.db"
    old = shard_path(base, 1)  # a worker's file its (older) writer made
    with tiny_spans():
        store = RecordStore(old)
        for batch in batches:
            store.write(batch)
        store.close()
        without_runs(old, how, nulled)
        writer = RecordStore(base)
        writer.write([Record("teltonika", "a", "position", 5, 5, {"n": 5})])
        reader = RecordStore(base, read_shards=True)
        try:
            check_reads(reader, [base, old], data, queries=3)
            store = RecordStore(old)  # its writer, upgraded: every span with runs again
            try:
                check_runs(store._writer)
                check_reads(store, [old], data, queries=3)
                store.write(batches[0])
                check_runs(store._writer)
                check_reads(store, [old], data, queries=3)
                # The reader opened before the upgrade reads the runs now.
                check_reads(reader, [base, old], data, queries=3)
                assert reader._groups[0].runs("shard1")
            finally:
                store.close()
        finally:
            reader.close()
            writer.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    max_runs=st.integers(1, 4),
    rounds=st.integers(1, 12),
    devices=st.integers(2, 3),
    per_device=st.integers(1, 3),
    late=st.booleans(),
    data=st.data(),
)
def test_interleaved_devices_close_spans_at_max_runs_when_written_and_when_migrated(
    tmp_path_factory: pytest.TempPathFactory,
    max_runs: int,
    rounds: int,
    devices: int,
    per_device: int,
    late: bool,
    data: st.DataObject,
) -> None:
    """Devices writing in turn (every run its own), within the span width and ids: a span
    ends at ``max_runs`` runs, in the writer and in the migration alike; reads in chunks."""
    names = DEVICES[:devices]
    batches = [
        [
            # ``late``: the last device's times go back (its spans are unordered).
            Record(
                "teltonika",
                name,
                "position",
                30 - turn if late and name == names[-1] else turn,
                turn,
                {"latitude": 1.5, "longitude": turn + n},
            )
            for name in names
            for n in range(per_device)
        ]
        for turn in range(rounds)
    ]
    path = tmp_path_factory.mktemp("store") / "fleetgate.db"
    old = path.with_name("old.db")
    make_old_store(old, [record for batch in batches for record in batch])
    with (
        tiny_spans(width=60, max_ids=1000, max_runs=max_runs),
        mock.patch.object(store_spans, "MAX_SPANS_PER_DEVICE", 100),
    ):
        for file in (path, old):
            store = RecordStore(file)
            try:
                if file == path:
                    for batch in batches:
                        store.write(batch)
                check_runs(store._writer)
                spans = dict(
                    store._writer.execute("SELECT device_id, count(*) FROM spans GROUP BY 1")
                )
                # Every round is a run of its own (the other devices wrote in between).
                assert spans == dict.fromkeys(names, -(-rounds // max_runs))
                check_reads(store, [file], data, queries=3)
            finally:
                store.close()


# -- the writer's plan ------------------------------------------------------------------------
def reference_plan(
    index: store_spans.SpanIndex, groups: list[store_spans.DeviceRows], first_id: int
) -> store_spans.SpanPlan:
    """The plan as Span's own rules make it (takes, extended, new, row): what the written-out
    loop of SpanIndex.planning must equal."""
    plan = store_spans.SpanPlan(next_id=index.next_id)
    touched: dict[str, store_spans.Span] = {}
    row_id = first_id
    for device, count, oldest, newest, ordered in groups:
        last_id = row_id + count - 1
        span = touched.get(device) or index.latest.get(device)
        if span is not None and span.takes(row_id, last_id, oldest, newest):
            span = span.extended(row_id, last_id, oldest, newest, ordered)
        else:
            span = store_spans.Span.new(
                plan.next_id, device, row_id, last_id, oldest=oldest, newest=newest,
                ordered=ordered,
            )
            plan.next_id += 1
            plan.counts[device] = plan.counts.get(device, index.counts.get(device, 0)) + 1
        touched[device] = span
        row_id = last_id + 1
    for span in touched.values():
        plan.rows.extend(span.row())
    plan.latest = touched
    return plan


# Device times a span's width limit is decided on exactly.
edges = st.sampled_from([0, store_spans.SPAN_WIDTH_MS, store_spans.SPAN_WIDTH_MS + 1])
device_rows = st.builds(
    store_spans.DeviceRows,
    device_id=st.sampled_from(DEVICES),
    rows=st.integers(1, 3) | st.integers(1, 70_000),
    oldest=st.integers(0, 5) | st.integers(0, 2 * store_spans.SPAN_WIDTH_MS) | edges,
    newest=st.integers(0, 5) | st.integers(0, 2 * store_spans.SPAN_WIDTH_MS) | edges,
    ordered=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    commits=st.lists(
        st.tuples(st.lists(device_rows, max_size=6), st.integers(0, 200)), max_size=40
    ),
    runless=st.sets(st.sampled_from(DEVICES)),
    most_runs=st.sampled_from([2, 3, store_spans.MAX_RUNS]),
    most_ids=st.sampled_from([6, 9, store_spans.SPAN_MAX_IDS]),
)
def test_the_written_out_plan_is_what_the_span_rules_make(
    commits: list[tuple[list[store_spans.DeviceRows], int]],
    runless: set[str],
    most_runs: int,
    most_ids: int,
) -> None:
    with (
        mock.patch.object(store_spans, "MAX_RUNS", most_runs),
        mock.patch.object(store_spans, "SPAN_MAX_IDS", most_ids),
    ):
        check_plans(commits, runless)


def check_plans(
    commits: list[tuple[list[store_spans.DeviceRows], int]], runless: set[str]
) -> None:
    index = store_spans.SpanIndex()
    # Spans written before spans had runs: never extended.
    for number, device in enumerate(sorted(runless), 1):
        index.latest[device] = store_spans.Span(number, device, 1, 1, 0, 0, True, None)
        index.counts[device] = 1
        index.next_id = number + 1
    row_id = 2
    for groups, skipped in commits:  # other rows (another writer's, a gap) between commits
        row_id += skipped
        plan = index.plan(groups, row_id)
        expected = reference_plan(index, groups, row_id)
        assert plan.rows == expected.rows
        assert plan.latest == expected.latest
        assert (plan.counts, plan.next_id) == (expected.counts, expected.next_id)
        assert (plan.first_id, plan.base) == (row_id, index.version)
        index.apply(plan)
        assert index.version != plan.base
        row_id += sum(group.rows for group in groups)


def spans_table(store: RecordStore) -> list[tuple[Any, ...]]:
    return store._writer.execute("SELECT * FROM spans ORDER BY id").fetchall()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.lists(records(), min_size=1, max_size=10), min_size=2, max_size=5),
    overtaken=st.integers(0, 4),
)
def test_spans_planned_ahead_are_what_the_commit_plans_even_when_another_commit_came_first(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Record]], overtaken: int
) -> None:
    directory = tmp_path_factory.mktemp("store")
    ahead, inline = RecordStore(directory / "ahead.db"), RecordStore(directory / "inline.db")
    try:
        overtaken %= len(batches)
        early = RecordStore.prepare(batches[overtaken])
        list(ahead.planning(early))  # planned, then another batch commits before it
        assert early.spans is not None
        order = [b for n, b in enumerate(batches) if n != overtaken] + [batches[overtaken]]
        for batch in order[:-1]:
            prepared = RecordStore.prepare(batch)
            list(ahead.planning(prepared))
            ahead.commit(prepared)
            inline.commit(RecordStore.prepare(batch))
        ahead.commit(early)
        inline.commit(RecordStore.prepare(order[-1]))
        assert spans_table(ahead) == spans_table(inline)
        assert ahead._spans.latest == inline._spans.latest
        for device in DEVICES:
            assert ahead.records(device, limit=100) == inline.records(device, limit=100)
    finally:
        ahead.close()
        inline.close()


def test_a_plan_made_ahead_is_not_used_again_after_its_commit_failed(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store.write([Record("s", "a", "t", 1, 1, {}, offset=1)])
    batch = RecordStore.prepare([Record("s", "a", "t", 2, 2, {"x": "y" * 2000}, offset=2)])
    list(store.planning(batch))
    assert batch.spans is not None
    store._writer.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    with pytest.raises(sqlite3.DataError):
        store.commit(batch)
    assert batch.spans is None and store._next_row is None
    store._writer.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10**6)
    store.commit(batch)
    assert [r["created_at"] for r in store.records("a")] == [
        "1970-01-01T00:00:00.002Z", "1970-01-01T00:00:00.001Z"
    ]
    store.close()
