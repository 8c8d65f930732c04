"""End-to-end Teltonika ingest: N trackers over loopback → server → SQLite store, with acks.

The server runs as ``fleetgate serve`` in its own process (uvloop, store on, default ack
level "spool": every ack waits for the durable spool; ``BENCH_CONFIG='{"ack_level": "store"}'``
makes it wait for the SQLite commit instead). The load generator runs in this
process on uvloop: each tracker holds the connection, sends a pre-encoded codec 8E frame,
waits for the ack (which must equal the record count) and sends the next, so the figure is
acknowledged records per second, not bytes pushed. Pre-encoding keeps the generator's cost
low; each send gets fresh record times, later than the tracker's previous frame's, like a
real tracker's (``fleetgate.sim.restamp``: with the pool's fixed times the store's index
took inserts in the middle of every device's range, and its writes grew with its size); on a 2-core machine the generator and the server still share the cores, which is
reported next to the result (server CPU seconds per wall second).

Run: ``.venv/bin/python bench/ingest_teltonika.py [--devices 1000] [--seconds 20]``
``--workers N`` runs the server as N worker processes on the port (config key ``workers``);
server CPU is then the sum over the supervisor and its workers. ``--junk N`` adds N peers
that never become trackers (a third send garbage, a third a byte every half second, a third
nothing; each reconnects when the server closes it), to see what they cost good devices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from machine_speed import describe as machine_speed
from procstats import (
    cpu_seconds,
    disk_counters,
    free_port,
    rss_mb,
    tree_cpu_seconds,
    tree_pids,
)

from fleetgate.protocols.teltonika.encoder import encode_imei
from fleetgate.protocols.teltonika.model import CODEC_8E, AvlRecord
from fleetgate.sim.restamp import StampedFrame, TrackerClock

ROOT = Path(__file__).resolve().parents[1]
FIRST_RECORD_MS = 1_700_000_000_000






def listening_sockets(port: int) -> int:
    """LISTEN sockets on ``port``: one per worker that has bound it (SO_REUSEPORT)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            count += 1
    return count




def frames_for(
    rng: random.Random, per_frame: int, count: int, io_elements: int
) -> list[StampedFrame]:
    frames = []
    timestamp = 1_700_000_000_000 + rng.randrange(0, 10**9)
    for _ in range(count):
        records = []
        for _ in range(per_frame):
            timestamp += 1000
            io: dict[int, int | bytes] = {239: 1, 240: 1, 21: 4, 66: 12800, 67: 4100, 16: 123456}
            extra = 1000
            while len(io) < io_elements:
                io[extra] = rng.randrange(0, 200)
                extra += 1
            records.append(
                AvlRecord(timestamp, 0, round(rng.uniform(20, 30), 7), round(rng.uniform(50, 60), 7),
                          100, rng.randrange(360), 10, rng.randrange(120), 0, io)
            )
        frames.append(StampedFrame.encode(CODEC_8E, records))
    return frames


class Tracker(asyncio.Protocol):
    """Send a frame, wait for its ack, repeat; count acknowledged records."""

    def __init__(
        self, imei: str, frames: list[StampedFrame], per_frame: int, stats: dict[str, int]
    ) -> None:
        self.imei = imei
        self.frames = frames
        self.clock = TrackerClock(FIRST_RECORD_MS)
        self.per_frame = per_frame
        self.stats = stats
        self.index = 0
        self.buffer = b""
        self.identified = False
        self.transport: asyncio.Transport | None = None
        self.running = True
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        self.transport.write(encode_imei(self.imei))

    def send_next(self) -> None:
        assert self.transport is not None
        self.transport.write(self.clock.stamp(self.frames[self.index % len(self.frames)]))
        self.index += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.identified:
            if self.buffer[:1] != b"\x01":
                self.stats["handshake_failures"] += 1
                self.done.set_result(None)
                return
            self.identified = True
            self.buffer = self.buffer[1:]
            self.send_next()
            return
        while len(self.buffer) >= 4:
            count = int.from_bytes(self.buffer[:4], "big")
            self.buffer = self.buffer[4:]
            if count != self.per_frame:
                self.stats["mismatches"] += 1
            self.stats["acked"] += count
            if self.running:
                self.send_next()
            elif not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.stats["lost"] += 1
            self.done.set_result(None)


class JunkPeer(asyncio.Protocol):
    """A connection that never becomes a tracker: garbage bytes, a byte now and then
    (slowloris) or silence; reconnects whenever the server closes it."""

    def __init__(self, kind: str, port: int, stats: dict[str, int], rng: random.Random) -> None:
        self.kind, self.port, self.stats, self.rng = kind, port, stats, rng
        self.transport: asyncio.Transport | None = None
        self.running = True
        self.ticker: asyncio.TimerHandle | None = None
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats["junk_connections"] += 1
        self.tick()

    def tick(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.kind == "garbage":
            self.transport.write(self.rng.randbytes(64))
        elif self.kind == "slow":
            self.transport.write(b"\x00")
        self.ticker = asyncio.get_running_loop().call_later(0.5, self.tick)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
        self.transport = None
        if self.running:
            asyncio.get_running_loop().call_later(0.2, self.reconnect)

    def reconnect(self) -> None:
        async def connect() -> None:
            with contextlib.suppress(OSError):
                await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1",
                                                                   self.port)
        if self.running:
            self.connecting = asyncio.ensure_future(connect())


async def load(port: int, devices: int, seconds: float, per_frame: int, io_elements: int,
               junk: int = 0, every: float = 0.0,
               report: Callable[[int], None] | None = None) -> dict[str, float]:
    """Drive the trackers for ``seconds`` after a warm-up; with ``report``, call it with the
    records acked so far every ``every`` seconds."""
    loop = asyncio.get_running_loop()
    rng = random.Random(1)
    pool = [frames_for(rng, per_frame, 8, io_elements) for _ in range(20)]
    stats = {"acked": 0, "mismatches": 0, "lost": 0, "handshake_failures": 0,
             "junk_connections": 0}
    peers = [JunkPeer(("garbage", "slow", "silent")[n % 3], port, stats, rng) for n in range(junk)]
    for peer in peers:
        await loop.create_connection(lambda p=peer: p, "127.0.0.1", port)  # type: ignore[misc]
    trackers: list[Tracker] = []
    for index in range(devices):
        tracker = Tracker(str(356307000000000 + index), pool[index % len(pool)], per_frame, stats)
        await loop.create_connection(lambda t=tracker: t, "127.0.0.1", port)  # type: ignore[misc]
        trackers.append(tracker)
    await asyncio.sleep(2.0)  # warm-up: every tracker identified and streaming
    start_acked, started = stats["acked"], time.perf_counter()
    if report is not None and every > 0:
        while (left := seconds - (time.perf_counter() - started)) > 0:
            await asyncio.sleep(min(every, left))
            report(stats["acked"])
    else:
        await asyncio.sleep(seconds)
    acked, elapsed = stats["acked"] - start_acked, time.perf_counter() - started
    for peer in peers:
        peer.running = False
        if peer.transport is not None:
            peer.transport.close()
    for tracker in trackers:
        tracker.running = False
    await asyncio.wait([t.done for t in trackers], timeout=10)
    for tracker in trackers:
        if tracker.transport is not None:
            tracker.transport.close()
    return {"records_per_s": acked / elapsed, "elapsed": elapsed, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--records-per-frame", type=int, default=10)
    parser.add_argument("--io-elements", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--junk", type=int, default=0,
                        help="connections that never become trackers (garbage, slowloris, "
                             "silent; each reconnects when closed)")
    parser.add_argument("--every", type=float, default=0.0, metavar="S",
                        help="also print acked records/s, server CPU and the disk's writes "
                             "every S seconds (to see a long run change as the store grows)")
    args = parser.parse_args()
    print(machine_speed(), flush=True)  # before the server runs: the core's own speed

    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        config = Path(data_dir) / "config.json"
        settings = {
            "data_dir": data_dir, "log_level": "warn", "tesla_enabled": False,
            "api": {"enabled": False}, "teltonika": {"host": "127.0.0.1", "port": port},
            "workers": args.workers,
            **json.loads(os.environ.get("BENCH_CONFIG", "{}")),
        }
        config.write_text(json.dumps(settings))
        # BENCH_PROFILE=FILE runs the server under cProfile (stats written on shutdown).
        profile = os.environ.get("BENCH_PROFILE")
        wrapper = ["-m", "cProfile", "-o", profile] if profile else []
        server = subprocess.Popen(
            [sys.executable, *wrapper, "-m", "fleetgate", "serve", "--config", str(config)],
            cwd=ROOT,
        )
        try:
            # Every worker must have bound the port, or the first gets all the trackers.
            for _ in range(600):
                if listening_sockets(port) >= max(args.workers, 1):
                    break
                time.sleep(0.05)
            cpu_before = tree_cpu_seconds(server.pid)
            written_before, busy_before = disk_counters(data_dir)
            own_before = cpu_seconds(os.getpid())
            wall_before = time.perf_counter()
            import uvloop

            last = [time.perf_counter(), 0, tree_cpu_seconds(server.pid),
                    *disk_counters(data_dir)]

            def report(acked: int) -> None:
                now, cpu, (written, busy) = (time.perf_counter(), tree_cpu_seconds(server.pid),
                                             disk_counters(data_dir))
                span = now - last[0]
                print(f"  {now - wall_before:6.0f} s: {(acked - last[1]) / span:8,.0f} acked "
                      f"records/s, server {(cpu - last[2]) / span:.2f} CPU, disk (whole "
                      f"machine) {(written - last[3]) / span / 1e6:5.0f} MB/s, busy "
                      f"{(busy - last[4]) / 1000 / span:4.0%}", flush=True)
                last[:] = [now, acked, cpu, written, busy]

            result = uvloop.run(load(port, args.devices, args.seconds, args.records_per_frame,
                                     args.io_elements, args.junk, args.every, report))
            wall = time.perf_counter() - wall_before
            server_cpu = (tree_cpu_seconds(server.pid) - cpu_before) / wall
            written, busy = disk_counters(data_dir)
            written, busy = written - written_before, busy - busy_before
            load_cpu = (cpu_seconds(os.getpid()) - own_before) / wall
            print(
                f"{args.devices} trackers, codec 8E, {args.records_per_frame} records/frame, "
                f"{args.io_elements} IO elements: {result['records_per_s']:,.0f} acked records/s "
                f"(ack level {settings.get('ack_level', 'spool')})"
            )
            print(
                f"server ({args.workers} worker(s)): {server_cpu:.2f} CPU-s per s, "
                f"RSS {sum(rss_mb(p) for p in tree_pids(server.pid)):.0f} MB; "
                f"load generator: {load_cpu:.2f} CPU-s per s; "
                f"ack mismatches={result['mismatches']:.0f} lost connections={result['lost']:.0f}"
                + f"; the disk (whole machine) wrote {written / 1e6:,.0f} MB, "
                f"{written / max(result['acked'], 1) / 1000:.2f} KB per acked record, "
                f"busy {busy / 1000 / wall:.0%} of the time"
                + (f"; {args.junk} junk peers opened {result['junk_connections']:.0f} connections"
                   if args.junk else "")
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    main()
