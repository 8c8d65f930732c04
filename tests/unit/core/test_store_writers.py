"""Several writers on one store: what ``workers`` > 1 does to the SQLite database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleetgate import store as store_module
from fleetgate.records import Record
from fleetgate.store import RecordStore

# One writer process: opens the (possibly brand-new) store, waits for the go file so that
# both processes write at the same moment, then writes BATCHES batches for its own devices.
WRITER = """
import sys, time
from pathlib import Path
from fleetgate.records import Record
from fleetgate.store import RecordStore

path, prefix, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = RecordStore(path)
while not go.exists():
    time.sleep(0.005)
for batch in range(150):
    store.write([
        Record("teltonika", f"{prefix}-{i % 5}", "position", batch * 100 + i, batch, {"i": i})
        for i in range(40)
    ])
store.close()
"""


def test_two_processes_writing_batches_at_once_lose_nothing(tmp_path: Path) -> None:
    db, go = tmp_path / "fresh" / "fleetgate.db", tmp_path / "go"
    (tmp_path / "fresh").mkdir()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), prefix, str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for prefix in ("w0", "w1")
    ]
    try:
        # Both have opened the new database (schema, WAL switch) concurrently before go.
        time.sleep(1.0)
        go.touch()
        results = [writer.communicate(timeout=120) for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
    for writer, (_out, err) in zip(writers, results, strict=True):
        assert writer.returncode == 0, err
    store = RecordStore(db)
    assert store.count() == 2 * 150 * 40
    counts = {device.device_id: device.record_count for device in store.devices()}
    assert counts == {f"w{w}-{d}": 150 * 8 for w in (0, 1) for d in range(5)}
    store.close()


def test_a_writer_waits_out_a_lock_longer_than_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process's transaction (here: another connection) holds the write lock for
    # several busy timeouts; the batch must wait and commit, not fail.
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 20)
    db = tmp_path / "fleetgate.db"
    store = RecordStore(db)
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.15, lambda: other.execute("COMMIT"))
    release.start()
    try:
        store.write([Record("teltonika", "a", "position", 1, 2, {"n": 1})])
    finally:
        release.join()
        other.close()
    assert store.count() == 1
    store.close()


def test_a_lock_that_never_ends_fails_the_batch_in_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 5)
    monkeypatch.setattr(store_module, "LOCK_ATTEMPTS", 3)
    db = tmp_path / "fleetgate.db"
    store = RecordStore(db)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.write([Record("teltonika", "a", "position", 1, 2, {"n": 1})])
    finally:
        other.execute("ROLLBACK")
        other.close()
    # The sink runner retries the failed batch; the store is usable again.
    store.write([Record("teltonika", "a", "position", 1, 2, {"n": 1})])
    assert store.count() == 1
    store.close()
