"""Bytes the SQLite store writes per record, by commit size, as its file grows.

``RecordStore.write`` in a loop (batches of ``--batch`` records from 1,000 devices, a
Teltonika-sized ``data``), printing the bytes written to disk per record (``write_bytes``
of ``/proc/self/io``: WAL, checkpoints, the database; this process does no ``fdatasync``
between checkpoints, which on this machine each add about 1 MiB to ``write_bytes``) and
the CPU time of ``write`` per record, for every 500,000 rows. With the per-record index
every commit rewrote each device's index leaf page, so the bytes per record depended on the
records per commit more than on the records themselves; with spans a commit upserts one
small span row per device (a few pages at the end of the ``spans`` table).

``--data teltonika`` writes what a codec 8E record of the ingest benchmark stores (~400
bytes of JSON, its ``data`` already serialised, as the spool leaves it), and ``--sync``
syncs the WAL every second as the sink does. Each report then also splits the CPU into
building the batch (the event loop's share) and the commit (the store thread's), and gives
the wall time per record and the longest commit (a checkpoint's stall).

Run: ``.venv/bin/python bench/store_writes.py --batch 2000 --rows 1500000`` (and
``--batch 20000``); the file goes to a temporary directory under ``--dir`` (default: the
system's), deleted at the end.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetgate.records import Record, data_json, new_record
from fleetgate.store import RecordStore

DEVICES = 1000
REPORT_EVERY = 500_000
START_MS = 1_767_225_600_000
DATA = {"lat": 54.1, "lon": 25.2, "speed": 50, "io": {"a": 1, "b": 2, "c": 3, "d": 4}}


def teltonika_data(rng: random.Random) -> dict[str, Any]:
    """A decoded codec 8E record's ``data`` (10 IO elements), as the ingest benchmark's."""
    io = {"239": 1, "240": 1, "21": 4}
    io.update({str(n): rng.randrange(200) for n in range(1000, 1004)})
    io.update({"66": 12800, "67": 4100, "16": 123456})
    return {
        "latitude": round(rng.uniform(50, 60), 7), "longitude": round(rng.uniform(20, 30), 7),
        "altitude": 100, "angle": rng.randrange(360), "satellites": 10,
        "speed": rng.randrange(120), "priority": 0, "event_io_id": 0,
        "event_triggered": False, "generation_type": None, "valid": True, "io": io,
        "gsm_signal": 4, "external_voltage": 12.8, "battery_voltage": 4.1,
        "total_odometer": 123456, "ignition": True, "movement": True,
    }


def written_bytes() -> int:
    with open("/proc/self/io") as file:
        for line in file:
            if line.startswith("write_bytes"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def make_batch(rows: int, size: int, kind: str, rng: random.Random) -> list[Record]:
    batch = []
    for i in range(size):
        n = rows + i
        data = dict(DATA) if kind == "small" else teltonika_data(rng)
        # A frame's 10 records are consecutive and of one device, as in ingest.
        record = new_record("teltonika", f"35630704244{n // 10 % DEVICES:04d}",
                            "avl" if kind == "small" else "position",
                            START_MS + n, START_MS + n, data)
        object.__setattr__(record, "offset", n + 1)  # the pipeline's offset
        if kind != "small":
            data_json(record)  # the spool serialised it already
        batch.append(record)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batch", type=int, default=2000, help="records per commit")
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--dir", default=None, help="where the store file goes")
    parser.add_argument("--data", choices=("small", "teltonika"), default="small",
                        help="record data: a small dict, or a codec 8E record's (~400 B)")
    parser.add_argument("--sync", action="store_true",
                        help="sync the WAL every second, as the sqlite sink does")
    parser.add_argument("--every", type=int, default=REPORT_EVERY, help="rows per report")
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        store = RecordStore(Path(directory) / "store.db")
        rows, reported_rows, reported_bytes = 0, 0, written_bytes()
        build = commit = 0.0
        commit_wall = worst = 0.0
        synced_at = time.monotonic()
        while rows < args.rows:
            batch = make_batch(rows, args.batch, args.data, rng)
            started = time.thread_time()
            prepared = store.prepare(batch)
            built = time.thread_time()
            wall = time.perf_counter()
            store.commit(prepared)
            if args.sync and time.monotonic() - synced_at >= 1.0:
                store.sync()
                synced_at = time.monotonic()
            wall = time.perf_counter() - wall
            commit_wall += wall
            worst = max(worst, wall)
            build += built - started
            commit += time.thread_time() - built
            rows += args.batch
            if rows - reported_rows >= args.every:
                now = written_bytes()
                count = rows - reported_rows
                per_record = (now - reported_bytes) / count
                print(f"batch {args.batch}: rows {rows:>10,}, {per_record:7.0f} bytes written "
                      f"per record, {(build + commit) / count * 1e6:5.1f} us of CPU per "
                      f"record (build {build / count * 1e6:4.1f}, commit "
                      f"{commit / count * 1e6:4.1f}), commits' wall "
                      f"{commit_wall / count * 1e6:5.1f} us per record, longest commit "
                      f"{worst * 1e3:5.0f} ms", flush=True)
                reported_rows, reported_bytes = rows, now
                build = commit = commit_wall = worst = 0.0
        store.close()


if __name__ == "__main__":
    main()
