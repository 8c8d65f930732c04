"""The store's checkpointer: WAL syncs and checkpoints after commits, off the commit path.

A round syncs the WAL and only then says which commits are power-loss durable (never one
that committed after the sync began), then copies the WAL into the database file so that
the writer's next transaction restarts the WAL. The sink reports that durable offset to the
runner (the spool keeps every record past it). Tests that need to know when a round runs
stop the store's own thread from running any (``quiet``) and run rounds themselves.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest

from fleetgate.records import Record
from fleetgate.sinks.base import SinkContext
from fleetgate.sinks.sqlite import SqliteSink
from fleetgate.store import Checkpointer, RecordStore


def batch(first: int, count: int, device: str = "a") -> list[Record]:
    return [
        Record("teltonika", device, "position", offset, offset, {"n": offset}, offset=offset)
        for offset in range(first, first + count)
    ]


def wal_frames(store: RecordStore) -> tuple[int, int]:
    """(frames in the WAL since its last restart, frames of them copied into the database),
    read from the WAL index (the ``-shm`` file: the header's mxFrame at byte 16, the
    checkpoint info's nBackfill at byte 96) without running a checkpoint."""
    shm = Path(f"{store.path}-shm").read_bytes()
    return int.from_bytes(shm[16:20], sys.byteorder), int.from_bytes(shm[96:100], sys.byteorder)


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's checkpointer thread runs no round: the test runs them."""

    def idle(self: Checkpointer) -> None:
        self._stopping.wait()

    monkeypatch.setattr(Checkpointer, "_run", idle)


@pytest.mark.usefixtures("quiet")
def test_a_round_makes_every_earlier_commit_durable_and_copies_the_wal(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store.write(batch(1, 500))
    store.write(batch(501, 500, device="b"))
    checkpointer = store._checkpointer
    assert checkpointer is not None
    assert store.synced_cursor() == 0  # committed, not synced yet
    log, done = wal_frames(store)
    assert log > done
    checkpointer.round()
    assert store.synced_cursor() == 1000
    log, done = wal_frames(store)
    assert log == done > 0  # all of it is in the database file now
    store.close()


@pytest.mark.usefixtures("quiet")
def test_a_commit_racing_the_sync_is_not_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store.write(batch(1, 10))
    checkpointer = store._checkpointer
    assert checkpointer is not None
    synced_once = store.sync

    def sync_then_commit() -> None:
        synced_once()
        monkeypatch.setattr(store, "sync", synced_once)
        store.write(batch(11, 10))  # committed after the WAL was synced

    monkeypatch.setattr(store, "sync", sync_then_commit)
    checkpointer.round()
    assert store.synced_cursor() == 10
    assert store.committed_cursor() == 20
    checkpointer.round()
    assert store.synced_cursor() == 20
    store.close()


@pytest.mark.usefixtures("quiet")
def test_the_next_write_after_a_round_restarts_the_wal(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    for first in range(1, 5001, 1000):
        store.write(batch(first, 1000, device=f"d{first}"))
    grown, _ = wal_frames(store)
    assert store._checkpointer is not None
    store._checkpointer.round()
    store.write(batch(5001, 1))
    restarted, _ = wal_frames(store)
    assert restarted < grown / 10
    assert [r["data"]["n"] for r in store.records("d4001", limit=2)] == [5000, 4999]
    store.close()


@pytest.mark.usefixtures("quiet")
async def test_the_sink_reports_as_synced_only_what_a_round_synced(tmp_path: Path) -> None:
    sink = SqliteSink({}, SinkContext(data_dir=str(tmp_path)))
    await sink.publish(batch(1, 7))
    assert sink.committed_offset() == 7
    assert sink.synced_offset() == 0
    assert sink.store._checkpointer is not None
    sink.store._checkpointer.round()
    assert sink.synced_offset() == 7
    await sink.publish(batch(8, 3))
    assert sink.synced_offset() == 7
    await sink.close()  # syncs everything
    assert sink.synced_offset() == 10


async def test_a_restarted_sink_counts_what_the_file_holds_as_synced(tmp_path: Path) -> None:
    first = SqliteSink({}, SinkContext(data_dir=str(tmp_path)))
    await first.publish(batch(1, 5))
    await first.close()
    again = SqliteSink({}, SinkContext(data_dir=str(tmp_path)))
    assert again.synced_offset() == again.committed_offset() == 5
    await again.close()


def test_the_thread_runs_rounds_after_commits_and_stops_on_close(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    assert store._checkpointer is None  # a store that never writes has no thread
    rounds = threading.Semaphore(0)
    store.write(batch(1, 3))
    checkpointer = store._checkpointer
    assert checkpointer is not None
    original = checkpointer.round

    def counted() -> None:
        original()
        rounds.release()

    checkpointer.round = counted  # type: ignore[method-assign]
    store.write(batch(4, 3))
    while store.synced_cursor() < 6:  # a round under way may have read the first commit
        assert rounds.acquire(timeout=30)
    thread = checkpointer._thread
    store.close()
    assert not thread.is_alive()


def test_a_failed_round_is_logged_and_the_next_commit_tries_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    failed = threading.Event()
    synced = threading.Event()
    real_sync = store.sync

    def sync() -> None:
        if not failed.is_set():
            failed.set()
            raise OSError(5, "Input/output error")
        real_sync()
        synced.set()

    store.sync = sync  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="fleetgate.store"):
        store.write(batch(1, 3))
        assert failed.wait(timeout=30)
        store.write(batch(4, 3))
        assert synced.wait(timeout=30)
    assert "store checkpoint failed" in caplog.text
    store.close()
    assert store.synced_cursor() == 6
