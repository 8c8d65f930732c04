"""What the store's per-device index costs per record, and what a per-frame index would.

Plain ``sqlite3`` with the store's pragmas (WAL, ``synchronous=NORMAL``, 16 MiB cache,
checkpoints every 10,000 pages, statement journal in memory) and its ``records`` table;
rows inserted in 256-row statements, one transaction per batch, frames of ten records from
1,000 devices in turn (as trackers send them). Printed: the inserting thread's CPU time per
record (``time.thread_time``: SQLite's work and the statements' parameters) after a
warm-up, for

* **index per record**: the store's schema, ``records_by_device_time`` on every row;
* **no index**: the table alone (the floor for these rows);
* **index per frame**: no index on the records, one row per frame in a ``spans`` table
  (device, newest and oldest time, first and last row id) keyed by device and time, so
  a device's records are found by their frames' id ranges.

Run: ``.venv/bin/python bench/store_index.py [--batch 10240] [--batches 60] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time

import orjson

DEVICES = 1000
PER_FRAME = 10
ROWS_PER_STATEMENT = 256
WARM_UP_BATCHES = 10
START_MS = 1_767_225_600_000
DATA = orjson.dumps({
    "lat": 54.1, "lon": 25.2, "speed": 50, "io": {str(n): n * 7 for n in range(20)},
}).decode()

RECORDS = (
    "CREATE TABLE records (id INTEGER PRIMARY KEY, source TEXT NOT NULL, device_id TEXT "
    "NOT NULL, topic TEXT NOT NULL, created_at INTEGER NOT NULL, received_at INTEGER NOT "
    "NULL, data TEXT NOT NULL, meta TEXT, seq INTEGER);"
)
INDEX = "CREATE INDEX records_by_device_time ON records (device_id, created_at, id);"
SPANS = (
    "CREATE TABLE spans (device_id TEXT NOT NULL, newest INTEGER NOT NULL, oldest INTEGER "
    "NOT NULL, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL, "
    "PRIMARY KEY (device_id, newest, first_id)) WITHOUT ROWID;"
)
INSERT = ("INSERT INTO records (id, source, device_id, topic, created_at, received_at, data, "
          "seq) VALUES ")
ROW_WIDTH = 8
SPAN_WIDTH = 5


def connect(path: str, schema: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-16384",
                   "wal_autocheckpoint=10000", "temp_store=MEMORY"):
        connection.execute(f"PRAGMA {pragma}")
    connection.executescript(schema)
    return connection


def statement(prefix: str, width: int, rows: int = ROWS_PER_STATEMENT) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return prefix + ",".join([row] * rows)


def insert_all(connection: sqlite3.Connection, prefix: str, width: int,
               params: list[object]) -> None:
    """``params`` in statements of 256 rows, the rest in one shorter statement."""
    step = ROWS_PER_STATEMENT * width
    full = len(params) - len(params) % step
    sql = statement(prefix, width)
    for start in range(0, full, step):
        connection.execute(sql, params[start : start + step])
    if full < len(params):
        connection.execute(statement(prefix, width, (len(params) - full) // width),
                           params[full:])


def run(label: str, schema: str, spans: bool, batch: int, batches: int, directory: str) -> None:
    with tempfile.TemporaryDirectory(dir=directory) as folder:
        connection = connect(os.path.join(folder, "store.db"), schema)
        rows = 0
        cpu = 0.0
        for number in range(batches):
            started = time.thread_time()
            params: list[object] = []
            span_params: list[object] = []
            for first in range(rows, rows + batch, PER_FRAME):
                device = f"35630704244{(first // PER_FRAME) % DEVICES:04d}"
                for index in range(first, first + PER_FRAME):
                    params.extend((index + 1, "teltonika", device, "avl", START_MS + index,
                                   START_MS + index, DATA, index))
                if spans:
                    span_params.extend((device, START_MS + first + PER_FRAME - 1,
                                        START_MS + first, first + 1, first + PER_FRAME))
            connection.execute("BEGIN")
            insert_all(connection, INSERT, ROW_WIDTH, params)
            if spans:
                insert_all(connection, "INSERT INTO spans VALUES ", SPAN_WIDTH, span_params)
            connection.execute("COMMIT")
            if number >= WARM_UP_BATCHES:
                cpu += time.thread_time() - started
            rows += batch
        connection.close()
        measured = (batches - WARM_UP_BATCHES) * batch
        print(f"{label:<18} {cpu / measured * 1e6:5.1f} us of CPU per record "
              f"({batch:,} records per commit, {rows:,} rows)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batch", type=int, default=10240, help="records per commit")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--dir", default=None, help="where the files go")
    args = parser.parse_args()
    if args.batch % PER_FRAME or args.batches <= WARM_UP_BATCHES:
        parser.error(f"--batch must be a multiple of {PER_FRAME}, --batches > {WARM_UP_BATCHES}")
    variants: list[tuple[str, str, bool]] = [
        ("index per record", RECORDS + INDEX, False),
        ("no index", RECORDS, False),
        ("index per frame", RECORDS + SPANS, True),
    ]
    for label, schema, spans in variants:
        run(label, schema, spans, args.batch, args.batches, args.dir)


if __name__ == "__main__":
    main()
