"""Bytes the SQLite store writes per record, by commit size, as its file grows.

``RecordStore.write`` in a loop (batches of ``--batch`` records from 1,000 devices, a
Teltonika-sized ``data``), printing the bytes written to disk per record (``write_bytes``
of ``/proc/self/io``: WAL, checkpoints, the database; this process does no ``fdatasync``
between checkpoints, which on this machine each add about 1 MiB to ``write_bytes``) and
the CPU time of ``write`` per record, for every 500,000 rows. With the per-record index
every commit rewrote each device's index leaf page, so the bytes per record depended on the
records per commit more than on the records themselves; with spans a commit upserts one
small span row per device (a few pages at the end of the ``spans`` table).

Run: ``.venv/bin/python bench/store_writes.py --batch 2000 --rows 1500000`` (and
``--batch 20000``); the file goes to a temporary directory under ``--dir`` (default: the
system's), deleted at the end.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fleetgate.records import new_record
from fleetgate.store import RecordStore

DEVICES = 1000
REPORT_EVERY = 500_000
START_MS = 1_767_225_600_000
DATA = {"lat": 54.1, "lon": 25.2, "speed": 50, "io": {"a": 1, "b": 2, "c": 3, "d": 4}}


def written_bytes() -> int:
    with open("/proc/self/io") as file:
        for line in file:
            if line.startswith("write_bytes"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batch", type=int, default=2000, help="records per commit")
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--dir", default=None, help="where the store file goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        store = RecordStore(Path(directory) / "store.db")
        rows, reported_rows, reported_bytes = 0, 0, written_bytes()
        cpu = 0.0
        while rows < args.rows:
            batch = [
                new_record("teltonika", f"35630704244{(rows + i) % DEVICES:04d}", "avl",
                           START_MS + rows + i, START_MS + rows + i, dict(DATA))
                for i in range(args.batch)
            ]
            started = time.thread_time()
            store.write(batch)
            cpu += time.thread_time() - started
            rows += args.batch
            if rows - reported_rows >= REPORT_EVERY:
                now = written_bytes()
                per_record = (now - reported_bytes) / (rows - reported_rows)
                print(f"batch {args.batch}: rows {rows:>9,}, {per_record:7.0f} bytes written "
                      f"per record, {cpu / (rows - reported_rows) * 1e6:5.1f} us of CPU per "
                      "record", flush=True)
                reported_rows, reported_bytes, cpu = rows, now, 0.0
        store.close()


if __name__ == "__main__":
    main()
