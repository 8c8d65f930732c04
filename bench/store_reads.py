"""Read latency of the store's API queries at N rows.

Fills a store with ``RecordStore.write`` (``--rows`` records from 1,000 devices in turn,
one record per device per second of device time, batches of ``--batch``, Teltonika-sized
``data`` with a position), then times each query the REST API makes, on devices spread
over the fleet, and prints the median and the slowest call in milliseconds:

* ``latest``: ``records(device, limit=1)`` (``/devices/{id}/latest``);
* ``page 100``: the first ``records_page`` of 100 (``/devices/{id}/records``);
* ``page 100, 10 deep``: the 11th page, after ten cursors;
* ``window 1 min``: a page of a one-minute ``since``/``until`` window in the middle;
* ``track 5000``: ``track`` over the whole time range, 5,000 points;
* ``positions x1000``: ``positions`` of every device (``/devices``);
* ``devices``: ``devices()``.

Each query also gives its median CPU time (the calling thread's: reads run there, and on a
busy machine wall time has others' work in it). ``--page-size`` makes the store file with
that page size instead of the store's own.

Before/after: ``--compare SRC`` runs this same script with ``PYTHONPATH=SRC`` (another
tree's ``src``) and with this tree's, in turn, each on its own file.

Run: ``PYTHONPATH=src .venv/bin/python bench/store_reads.py --rows 1000000 --dir /work
[--compare /path/to/before/src]``
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEVICES = 1000
START_MS = 1_767_225_600_000
SAMPLES = 20


def device_name(number: int) -> str:
    return f"35630704244{number % DEVICES:04d}"


def fill(path: Path, rows: int, batch: int, page_size: int = 0) -> None:
    import fleetgate.store
    from fleetgate.records import new_record
    from fleetgate.store import RecordStore

    if page_size:
        fleetgate.store.PAGE_SIZE = page_size
    store = RecordStore(path)
    written = 0
    while written < rows:
        records = []
        for i in range(written, min(written + batch, rows)):
            data = {
                "latitude": 54.0 + (i % 997) / 1e4,
                "longitude": 25.0 + (i % 991) / 1e4,
                "speed": 50,
                "io": {"a": 1, "b": 2, "c": 3, "d": 4},
            }
            records.append(
                new_record(
                    "teltonika", device_name(i), "position", START_MS + i, START_MS + i, data
                )
            )
        store.write(records)
        written += len(records)
    store.close()


def timed(call: Callable[[int], Any]) -> tuple[float, float, float]:
    """Median and slowest of :data:`SAMPLES` calls (ms), each on another device, and the
    median CPU time of a call (ms)."""
    times = []
    cpu = []
    for sample in range(SAMPLES):
        started, started_cpu = time.perf_counter(), time.thread_time()
        call(sample * (DEVICES // SAMPLES) + 7)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
    return statistics.median(times), max(times), statistics.median(cpu)


def measure(path: Path, rows: int) -> None:
    from fleetgate.store import RecordStore

    store = RecordStore(path)
    middle = START_MS + rows // 2

    def deep(number: int) -> None:
        cursor = None
        for _ in range(11):
            _, cursor = store.records_page(device_name(number), limit=100, after=cursor)

    queries: list[tuple[str, Callable[[int], Any]]] = [
        ("latest", lambda n: store.records(device_name(n), limit=1)),
        ("page 100", lambda n: store.records_page(device_name(n), limit=100)),
        ("page 100, 10 deep", deep),
        (
            "window 1 min",
            lambda n: store.records_page(
                device_name(n), since=middle, until=middle + 60_000, limit=100
            ),
        ),
        ("track 5000", lambda n: store.track(device_name(n), START_MS, None, 5000)),
    ]
    for label, call in queries:
        median, worst, cpu = timed(call)
        print(
            f"{label:<20} {median:9.2f} ms median {worst:9.2f} ms max {cpu:9.2f} ms CPU median",
            flush=True,
        )
    everyone = [device_name(n) for n in range(DEVICES)]
    started, started_cpu = time.perf_counter(), time.thread_time()
    found = store.positions(everyone)
    print(
        f"{'positions x1000':<20} {(time.perf_counter() - started) * 1000:9.2f} ms "
        f"({len(found)} found) {(time.thread_time() - started_cpu) * 1000:9.2f} ms CPU",
        flush=True,
    )
    started, started_cpu = time.perf_counter(), time.thread_time()
    store.devices()
    print(
        f"{'devices':<20} {(time.perf_counter() - started) * 1000:9.2f} ms "
        f"{(time.thread_time() - started_cpu) * 1000:9.2f} ms CPU",
        flush=True,
    )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="records per commit")
    parser.add_argument("--dir", default=None, help="where the store files go")
    parser.add_argument("--compare", default=None, help="another tree's src: before, then this")
    parser.add_argument("--page-size", type=int, default=0,
                        help="page size of the store file (default: the store's)")
    args = parser.parse_args()
    if args.compare:
        here = str(Path(__file__).resolve().parents[1] / "src")
        for label, src in (("before", args.compare), ("after", here)):
            print(f"== {label}: PYTHONPATH={src}", flush=True)
            command = [
                sys.executable,
                __file__,
                "--rows",
                str(args.rows),
                "--batch",
                str(args.batch),
            ]
            if args.dir:
                command += ["--dir", args.dir]
            if args.page_size:
                command += ["--page-size", str(args.page_size)]
            subprocess.run(command, env={**os.environ, "PYTHONPATH": src}, check=True)
        return
    import fleetgate.store

    print(f"store: {fleetgate.store.__file__}, {args.rows:,} rows", flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        path = Path(directory) / "store.db"
        started = time.perf_counter()
        fill(path, args.rows, args.batch, args.page_size)
        with sqlite3.connect(path) as connection:
            page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        connection.close()
        print(
            f"filled in {time.perf_counter() - started:.1f} s, {path.stat().st_size / 1e6:.0f} MB, "
            f"page size {page_size}",
            flush=True,
        )
        measure(path, args.rows)


if __name__ == "__main__":
    main()
