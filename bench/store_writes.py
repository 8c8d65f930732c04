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

``--threaded`` commits in a worker thread while the main thread builds the batch in slices
of ``--slice`` records, as the sqlite sink does (the build's CPU is the main thread's, the
commit's the worker's, each with its kernel share), and a probe thread wakes every 0.2 ms
and reports how late it got the GIL back while a commit ran: the longest and the 99th
percentile of those waits is what the event loop would wait for the commit thread (wall
clock: meaningful only on an otherwise idle machine; the collector is off, as the server's
pacer keeps it off the records in flight). The build's holds of the loop are its steps: it
gives the longest single one (in CPU time). It also reports the checkpointer thread's CPU
(its rounds', measured in that thread) and the bytes written per record (``write_bytes`` and
``wchar``, the bytes handed to ``write()``, of ``/proc/self/io``); at the end, the database
file's size per record.

``--page-size`` makes the new store file with that page size instead of the store's own.

Run: ``.venv/bin/python bench/store_writes.py --batch 2000 --rows 1500000`` (and
``--batch 20000``); the file goes to a temporary directory under ``--dir`` (default: the
system's), deleted at the end.

``--measure`` counts instructions instead (callgrind, :mod:`callgrind` next to this script):
batches of 10,000 Teltonika records made (``frames``), built and planned as the sink does on
the loop (``build``), and committed (``commit``), each at two batch counts; it prints the
loop side (build minus frames) and the commit side (commit minus build) per record. The
commit side is the commit thread's (with or without the GIL) and the checkpointer's.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import callgrind  # bench/callgrind.py, next to this script

import fleetgate.store
from fleetgate.records import Record, data_json, new_record
from fleetgate.store import BatchBuilder, Checkpointer, PreparedBatch, RecordStore

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


def io_counters() -> dict[str, int]:
    """``/proc/self/io``: ``wchar`` (bytes passed to write()), ``write_bytes`` and the rest."""
    with open("/proc/self/io") as file:
        return {name: int(value) for name, value in (line.split(":") for line in file)}


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


class GilProbe:
    """A thread that sleeps 0.2 ms at a time and keeps how late it woke (its GIL wait)."""

    PERIOD_S = 0.0002

    def __init__(self) -> None:
        self.lates: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lates, sleep, clock, period = self.lates, time.sleep, time.perf_counter, self.PERIOD_S
        while not self._stop.is_set():
            before = clock()
            sleep(period)
            lates.append(clock() - before - period)

    def take(self) -> list[float]:
        taken, self.lates[:] = sorted(self.lates), []
        return taken

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def thread_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


def watch_checkpointer() -> list[float]:
    """The checkpointer thread's CPU [user, sys] so far, kept up to date: its rounds run in
    that thread, so a wrapper around ``Checkpointer.round`` can ask for its own usage."""
    totals = [0.0, 0.0]
    original = Checkpointer.round

    def round_measured(self: Checkpointer) -> None:
        user, system = thread_cpu()
        try:
            original(self)
        finally:
            after = thread_cpu()
            totals[0] += after[0] - user
            totals[1] += after[1] - system

    Checkpointer.round = round_measured  # type: ignore[method-assign]
    return totals


def build_sliced(
    store: RecordStore, batch: list[Record], size: int
) -> tuple[PreparedBatch, float]:
    """The batch built (and its spans planned) as the sink does, in steps; and the longest
    step (its thread's CPU time: on a busy machine a step's wall time has others' in it)."""
    clock = time.thread_time
    longest = 0.0
    builder = BatchBuilder()
    for start in range(0, len(batch), size):
        began = clock()
        builder.add(batch[start : start + size])
        longest = max(longest, clock() - began)
    finishing = getattr(builder, "finishing", None)
    if finishing is None:  # a version that finishes in one step
        began = clock()
        return builder.finish(), max(longest, clock() - began)
    steps = finishing()
    while True:
        began = clock()
        try:
            next(steps)
        except StopIteration as done:
            prepared: PreparedBatch = done.value
            longest = max(longest, clock() - began)
            break
        longest = max(longest, clock() - began)
    planning = getattr(store, "planning", None)
    if planning is not None:  # a version that plans spans ahead of the commit
        plan_steps = planning(prepared)
        while True:
            began = clock()
            ended = next(plan_steps, True)
            longest = max(longest, clock() - began)
            if ended:
                break
    return prepared, longest


def run_threaded(args: argparse.Namespace, store: RecordStore, rng: random.Random) -> None:
    # The server keeps the collector off the records in flight (app.CollectorPacer); here
    # its full collections of the test batches would be the longest holds.
    gc.disable()
    pool = ThreadPoolExecutor(1)
    probe = GilProbe()
    checkpointer = watch_checkpointer()
    reported_cpu = [0.0, 0.0]
    reported_io = io_counters()

    def commit(prepared: PreparedBatch, sync: bool) -> tuple[float, float]:
        user, system = thread_cpu()
        store.commit(prepared)
        if sync:
            store.sync()
        after = thread_cpu()
        return after[0] - user, after[1] - system

    rows = reported_rows = 0
    build = commit_user = commit_sys = longest_step = 0.0
    synced_at = time.monotonic()
    lates: list[float] = []
    while rows < args.rows:
        batch = make_batch(rows, args.batch, args.data, rng)
        started = time.thread_time()
        prepared, step = build_sliced(store, batch, args.slice)
        build += time.thread_time() - started
        longest_step = max(longest_step, step)
        sync = args.sync and time.monotonic() - synced_at >= 1.0
        if sync:
            synced_at = time.monotonic()
        probe.take()  # the build's holds are its steps (the loop's own)
        user, system = pool.submit(commit, prepared, sync).result()
        lates += probe.take()  # the commit thread's holds
        commit_user += user
        commit_sys += system
        rows += args.batch
        if rows - reported_rows >= args.every:
            count = rows - reported_rows
            lates.sort()
            p99 = lates[int(len(lates) * 0.99)] if lates else 0.0
            print(f"batch {args.batch}: rows {rows:>10,}: build {build / count * 1e6:4.2f} us "
                  f"CPU per record (longest step {longest_step * 1e3:5.2f} ms), commit "
                  f"thread {commit_user / count * 1e6:4.2f} user + "
                  f"{commit_sys / count * 1e6:4.2f} sys us per record; GIL probe wait "
                  f"p99 {p99 * 1e3:5.2f} ms, max {(lates[-1] if lates else 0) * 1e3:5.2f} ms",
                  flush=True)
            now_io = io_counters()
            print(f"  checkpointer {(checkpointer[0] - reported_cpu[0]) / count * 1e6:4.2f} "
                  f"user + {(checkpointer[1] - reported_cpu[1]) / count * 1e6:4.2f} sys us "
                  f"per record; written per record: "
                  f"{(now_io['wchar'] - reported_io['wchar']) / count:6.0f} B wchar, "
                  f"{(now_io['write_bytes'] - reported_io['write_bytes']) / count:6.0f} B "
                  f"write_bytes", flush=True)
            reported_cpu, reported_io = list(checkpointer), now_io
            reported_rows = rows
            build = commit_user = commit_sys = longest_step = 0.0
            lates = []
    probe.stop()
    pool.shutdown()


MEASURE_STAGES = ("frames", "build", "commit")
MEASURE_BATCH = 10_000
MEASURE_BATCHES = (1, 3)
# --page-size for the --measure stages (each runs in a process of its own, under callgrind).
PAGE_SIZE_ENV = "STORE_WRITES_PAGE_SIZE"


def run_stage(stage: str, batches: int) -> None:
    """One ``--measure`` stage: ``batches`` batches made, built (``build``, ``commit``) and
    committed (``commit``)."""
    gc.disable()  # as run_threaded: the server keeps the collector off the records in flight
    rng = random.Random(7)
    if os.environ.get(PAGE_SIZE_ENV):
        fleetgate.store.PAGE_SIZE = int(os.environ[PAGE_SIZE_ENV])
    with tempfile.TemporaryDirectory() as directory:
        store = RecordStore(Path(directory) / "store.db")
        for number in range(batches):
            batch = make_batch(number * MEASURE_BATCH, MEASURE_BATCH, "teltonika", rng)
            if stage != "frames":
                prepared, _ = build_sliced(store, batch, 256)
                if stage == "commit":
                    store.commit(prepared)
        store.close()


def measure() -> None:
    low, high = MEASURE_BATCHES
    per_record = {}
    for stage in MEASURE_STAGES:
        small = callgrind.instructions(__file__, stage, low)
        large = callgrind.instructions(__file__, stage, high)
        per_record[stage] = (large - small) / ((high - low) * MEASURE_BATCH)
    print(f"loop side (build and plan, in steps): "
          f"{per_record['build'] - per_record['frames']:,.0f} instructions per record")
    print(f"commit side (commit thread, checkpointer): "
          f"{per_record['commit'] - per_record['build']:,.0f} instructions per record")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in MEASURE_STAGES:  # one stage, under callgrind
        stage_parser = argparse.ArgumentParser()
        stage_parser.add_argument("stage", choices=MEASURE_STAGES)
        stage_parser.add_argument("--frames", type=int, required=True, help="batches")
        stage_args = stage_parser.parse_args()
        run_stage(stage_args.stage, stage_args.frames)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batch", type=int, default=2000, help="records per commit")
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--dir", default=None, help="where the store file goes")
    parser.add_argument("--data", choices=("small", "teltonika"), default="small",
                        help="record data: a small dict, or a codec 8E record's (~400 B)")
    parser.add_argument("--sync", action="store_true",
                        help="sync the WAL every second, as the sqlite sink does")
    parser.add_argument("--every", type=int, default=REPORT_EVERY, help="rows per report")
    parser.add_argument("--threaded", action="store_true",
                        help="build in slices, commit in a worker thread, probe the GIL")
    parser.add_argument("--slice", type=int, default=256, help="records per build step")
    parser.add_argument("--page-size", type=int, default=0,
                        help="page size of the new store file (default: the store's)")
    parser.add_argument("--measure", action="store_true",
                        help="instructions per record (callgrind), loop side and commit side")
    args = parser.parse_args()
    if args.measure:
        if args.page_size:
            os.environ[PAGE_SIZE_ENV] = str(args.page_size)
        measure()
        return
    if args.page_size:
        fleetgate.store.PAGE_SIZE = args.page_size
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        store = RecordStore(Path(directory) / "store.db")
        page_size = store._writer.execute("PRAGMA page_size").fetchone()[0]
        print(f"page size {page_size}", flush=True)
        if args.threaded:
            run_threaded(args, store, rng)
            store.close()
            size = store.path.stat().st_size
            print(f"database file {size / 1e6:.0f} MB, {size / args.rows:.0f} B per record",
                  flush=True)
            return
        rows, reported_rows, reported_bytes = 0, 0, io_counters()["write_bytes"]
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
                now = io_counters()["write_bytes"]
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
