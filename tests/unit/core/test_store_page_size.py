"""The page size of store files: a new file gets :data:`PAGE_SIZE`; a file made with another
(4096, SQLite's default, before the store set one) keeps it and works as before, alone and
read beside a new file as a worker's shard."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fleetgate import store as store_module
from fleetgate.records import Record
from fleetgate.store import PAGE_SIZE, RecordStore, shard_path

OLD_PAGE_SIZE = 4096


def batch(first: int, count: int, device: str = "a") -> list[Record]:
    return [
        Record("teltonika", device, "position", offset, offset, {"n": offset}, offset=offset)
        for offset in range(first, first + count)
    ]


def page_size(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    connection.close()
    return size


def old_file(path: Path, monkeypatch: pytest.MonkeyPatch, records: list[Record]) -> None:
    """A store file as the store made it before it set a page size, with ``records``."""
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "PAGE_SIZE", OLD_PAGE_SIZE)
        store = RecordStore(path)
        store.write(records)
        store.close()
    assert page_size(path) == OLD_PAGE_SIZE


def test_a_new_store_file_gets_the_page_size(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = RecordStore(path)
    try:
        assert store._writer.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        store.write(batch(1, 300))
        assert store.count() == 300
    finally:
        store.close()
    assert page_size(path) == PAGE_SIZE
    assert path.stat().st_size % PAGE_SIZE == 0


def test_a_file_made_with_4096_byte_pages_keeps_them_and_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PAGE_SIZE != OLD_PAGE_SIZE  # else this test shows nothing
    path = tmp_path / "db.sqlite"
    old_file(path, monkeypatch, batch(1, 300) + batch(301, 200, device="b"))
    store = RecordStore(path)
    try:
        assert store.cursor() == 500
        store.write(batch(501, 300))
        store.write(batch(801, 100, device="b"))
        # The checkpointer's rounds copy the WAL into the file without changing its pages.
        assert store._checkpointer is not None
        store._checkpointer.round()
        assert [r["data"]["n"] for r in store.records("a", limit=3)] == [800, 799, 798]
        assert [r["data"]["n"] for r in store.records("b", limit=2)] == [900, 899]
        assert {d.device_id: d.record_count for d in store.devices()} == {"a": 600, "b": 300}
        assert store.count() == 900
        assert store._writer.execute("PRAGMA page_size").fetchone()[0] == OLD_PAGE_SIZE
    finally:
        store.close()
    assert page_size(path) == OLD_PAGE_SIZE
    reopened = RecordStore(path)
    try:
        assert reopened.count() == 900
        assert reopened.cursor() == 900
    finally:
        reopened.close()
    assert page_size(path) == OLD_PAGE_SIZE


def test_a_reader_reads_an_old_page_size_shard_beside_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "fleetgate.db"
    old = shard_path(base, 1)  # an earlier run's second worker
    old_file(old, monkeypatch, batch(1, 50))
    writer = RecordStore(base)
    writer.write(batch(100, 50))
    reader = RecordStore(base, read_shards=True)
    try:
        got = [r["data"]["n"] for r in reader.records("a", limit=200)]
        assert got == [*range(149, 99, -1), *range(50, 0, -1)]
        assert reader.count() == 100
    finally:
        reader.close()
        writer.close()
    assert (page_size(base), page_size(old)) == (PAGE_SIZE, OLD_PAGE_SIZE)
