"""Batches of one source and one topic bind those texts once per statement.

A batch whose records all share a source and a topic and have no meta (every Teltonika
batch) is laid out without them per row (``_SHARED_ROW``: bound as ``?1``/``?2`` once per
statement); the first record that differs (another source or topic, or meta) turns the
rows so far into the per-row layout. These tests hold what lands in the file, and what the
read API answers, equal to the per-row form for batches that switch anywhere, in slices.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetgate.records import Record, record_dict
from fleetgate.store import BatchBuilder, RecordStore
from tests.unit.core.test_store_rows import (
    expected_devices,
    expected_row,
    grouped,
    stored,
    stored_devices,
)

# Mostly one source and topic (as ingest sends), now and then another, or meta.
sources = st.sampled_from(["teltonika"] * 6 + ["tesla", "t\x00\u00e9"])
topics = st.sampled_from(["position"] * 6 + ["event", ""])
shared_records = st.builds(
    Record,
    source=sources,
    device_id=st.sampled_from(["a", "b", "c", "356307042440001"]),
    topic=topics,
    created_at=st.integers(-3, 3) | st.integers(-(2**63), 2**63 - 1),
    received_at=st.integers(0, 5),
    data=st.dictionaries(
        st.sampled_from(["x", "y\u2028", '"']), st.integers(-(2**63), 2**63 - 1) | st.text()
    ),
    meta=st.none() | st.none() | st.just({"txid": "1"}),
    offset=st.integers(0, 9),
)


def as_json(record: Record) -> dict[str, Any]:
    """What the store's reads return for ``record``: its JSON form with a plain dict."""
    return {**record_dict(record), "data": dict(record.data)}


def built(batch: list[Record], cuts: list[int], shared: bool = True) -> BatchBuilder:
    builder = BatchBuilder(shared=shared)
    bounds = [0, *sorted(min(cut, len(batch)) for cut in cuts), len(batch)]
    for start, end in itertools.pairwise(bounds):
        builder.add(batch[start:end])
    return builder


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(shared_records, max_size=15),
            st.lists(st.integers(0, 15), max_size=3),
            st.booleans(),
        ),
        max_size=4,
    )
)
def test_rows_and_reads_equal_the_per_row_form_wherever_the_layout_switches(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[tuple[list[Record], list[int], bool]],
) -> None:
    store = RecordStore(tmp_path_factory.mktemp("store") / "db.sqlite")
    try:
        written: list[Record] = []
        for batch, cuts, shared in batches:
            store.commit(built(batch, cuts, shared).finish())
            written += grouped(batch)
        assert stored(store) == [expected_row(r) for r in written]
        assert stored_devices(store) == expected_devices([batch for batch, _, _ in batches])
        # Write, then read back through the API: every device's records, newest first.
        for device in {r.device_id for r in written}:
            rows = [(r, n) for n, r in enumerate(written) if r.device_id == device]
            rows.sort(key=lambda item: (item[0].created_at, item[1]), reverse=True)
            assert store.records(device, limit=100) == [as_json(r) for r, _ in rows]
    finally:
        store.close()


def test_a_uniform_batch_binds_its_source_and_topic_once_per_statement() -> None:
    # Equal texts that are other objects (records read back from the spool) stay shared.
    source, topic = "".join(["telt", "onika"]), "".join(["posi", "tion"])
    batch = [Record("teltonika", "a", "position", 1, 2, {}, offset=1)]
    batch.append(Record(source, "b", topic, 1, 2, {}, offset=2))
    prepared = built(batch, []).finish()
    assert prepared.head == ["teltonika", "position"]
    [(row, params)] = prepared.parts
    assert row.startswith("(?1, ?{}, ?2,") and len(params) == 2 * 5


@pytest.mark.parametrize(
    "other",
    [
        Record("tesla", "a", "position", 1, 2, {}, offset=3),
        Record("teltonika", "a", "event", 1, 2, {}, offset=3),
        Record("teltonika", "a", "position", 1, 2, {}, meta={"txid": "x"}, offset=3),
    ],
)
def test_a_record_that_differs_turns_the_batch_into_the_per_row_layout(
    tmp_path: Path, other: Record
) -> None:
    first = [Record("teltonika", device, "position", 1, 2, {"n": 1}, offset=1) for device in "ab"]
    prepared = built([*first, other], [2]).finish()
    assert prepared.head == []
    store = RecordStore(tmp_path / "db.sqlite")
    try:
        store.commit(prepared)
        assert stored(store) == [expected_row(r) for r in grouped([*first, other])]
    finally:
        store.close()


async def test_the_sink_starts_per_row_after_a_mixed_batch_and_tries_shared_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetgate.sinks import sqlite as sqlite_sink
    from fleetgate.sinks.base import SinkContext

    starts: list[bool] = []

    def recording_builder(shared: bool = True) -> BatchBuilder:
        starts.append(shared)
        return BatchBuilder(shared=shared)

    monkeypatch.setattr(sqlite_sink, "BatchBuilder", recording_builder)
    store = RecordStore(tmp_path / "db.sqlite")
    sink = sqlite_sink.SqliteSink({}, SinkContext(), store=store)
    offset = 0

    def batch(*sources: str) -> list[Record]:
        nonlocal offset
        records = []
        for source in sources:
            offset += 1
            records.append(Record(source, "a", "position", offset, offset, {}, offset=offset))
        return records

    try:
        written = batch("teltonika", "mqtt")  # mixed: the next batch starts per row
        await sink.publish(written)
        for _ in range(sqlite_sink.SHARED_RETRY):
            records = batch("teltonika", "teltonika")
            written += records
            await sink.publish(records)
        assert starts[:2] == [True, False]
        assert starts[sqlite_sink.SHARED_RETRY] is True  # the retry
        assert not any(starts[2 : sqlite_sink.SHARED_RETRY])
        assert stored(store) == [expected_row(r) for r in written]
    finally:
        store.close()
