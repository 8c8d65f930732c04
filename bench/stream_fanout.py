"""Live fan-out: ingest throughput with /stream clients connected vs none, in one run.

``fleetgate serve`` runs in its own process (store on, default ack level "spool", API on).
Trackers (this process, the load generator of ``ingest_teltonika.py``) send as fast as acks
come back, in alternating runs: without /stream clients, with ``--clients`` clients connected
(a third process), without, ... (``--rounds`` runs with clients, each between two without).
The clients use ``batch=1`` and count the records they receive, so the middle run also gives
the records/s fanned out (sum over clients) and the drop notices they got.

``--follow all``: every client receives every record (the heaviest case).
``--follow one``: each client follows one tracker (``device_id=``), like a dashboard.
Run: ``.venv/bin/python bench/stream_fanout.py [--clients 100] [--devices 200] [--seconds 10]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ingest_teltonika import listening_sockets, load
from procstats import cpu_seconds, free_port, rss_mb, tree_cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-0123456789abcdef0123456789"
FIRST_IMEI = 356307000000000

CLIENTS_SCRIPT = r"""
import asyncio, sys, time, jwt, uvloop
from websockets.asyncio.client import connect

port, clients, follow, devices, first = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                        int(sys.argv[4]), int(sys.argv[5]))
secret = sys.argv[6]
totals = {"records": 0, "dropped": 0, "connected": 0, "closed": 0}

async def client(index):
    token = jwt.encode({"sub": f"c{index}", "exp": int(time.time()) + 3600, "scope": "stream"}, secret)
    query = "?batch=1" + (f"&device_id={first + index % devices}" if follow == "one" else "")
    async with connect(f"ws://127.0.0.1:{port}/stream{query}", max_size=None,
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        totals["connected"] += 1
        async for message in ws:
            if message.startswith('{"type":"dropped"'):
                totals["dropped"] += int(message.split('"count":')[1].split(",")[0])
            else:
                totals["records"] += message.count('"device_id"')
    totals["closed"] += 1

async def report():
    while True:
        print(f"{time.monotonic()} {totals['records']} {totals['dropped']} {totals['connected']} "
              f"{totals['closed']}", flush=True)
        await asyncio.sleep(0.25)

async def main():
    asyncio.create_task(report())
    await asyncio.gather(*(client(i) for i in range(clients)), return_exceptions=True)

uvloop.run(main())
"""


class ClientProcess:
    """The /stream clients in their own process; the latest counters it printed."""

    def __init__(self, port: int, clients: int, follow: str, devices: int) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENTS_SCRIPT,
                str(port),
                str(clients),
                follow,
                str(devices),
                str(FIRST_IMEI),
                SECRET,
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.latest = (0.0, 0, 0, 0, 0)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            t, records, dropped, connected, closed = line.split()
            self.latest = (float(t), int(records), int(dropped), int(connected), int(closed))

    def wait_connected(self, clients: int) -> None:
        for _ in range(600):
            if self.latest[3] >= clients:
                return
            time.sleep(0.05)
        raise RuntimeError(f"only {self.latest[3]} of {clients} clients connected")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def run_load(port: int, args: argparse.Namespace) -> dict[str, float]:
    import uvloop

    return uvloop.run(load(port, args.devices, args.seconds, args.records_per_frame, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--records-per-frame", type=int, default=10)
    parser.add_argument("--follow", choices=["all", "one"], default="all")
    parser.add_argument("--rounds", type=int, default=2, help="runs with clients")
    args = parser.parse_args()

    tracker_port, api_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        config = Path(data_dir) / "config.json"
        config.write_text(
            json.dumps(
                {
                    "data_dir": data_dir,
                    "log_level": "warn",
                    "tesla_enabled": False,
                    "teltonika": {"host": "127.0.0.1", "port": tracker_port, "udp_enabled": False},
                    "api": {"host": "127.0.0.1", "port": api_port, "auth": {"secret": SECRET}},
                    **json.loads(os.environ.get("BENCH_CONFIG", "{}")),
                }
            )
        )
        # BENCH_PROFILE=FILE runs the server under cProfile (stats written on shutdown).
        profile = os.environ.get("BENCH_PROFILE")
        wrapper = ["-m", "cProfile", "-o", profile] if profile else []
        server = subprocess.Popen(
            [sys.executable, *wrapper, "-m", "fleetgate", "serve", "--config", str(config)],
            cwd=ROOT,
        )
        try:
            for _ in range(600):
                if listening_sockets(api_port) and listening_sockets(tracker_port):
                    break
                time.sleep(0.05)
            without: list[float] = []
            with_clients: list[float] = []
            # Alternate, starting and ending without clients: drift (other processes on the
            # machine, the store growing) shows in the spread of the runs without.
            for round_index in range(2 * args.rounds + 1):
                clients = None
                if round_index % 2:
                    clients = ClientProcess(api_port, args.clients, args.follow, args.devices)
                    clients.wait_connected(args.clients)
                cpu_before, wall_before = tree_cpu_seconds(server.pid), time.perf_counter()
                client_cpu_before = cpu_seconds(clients.process.pid) if clients else 0.0
                seen_before = clients.latest if clients else None
                result = run_load(tracker_port, args)
                wall = time.perf_counter() - wall_before
                label = f"{args.clients} clients" if clients else "no clients"
                line = (
                    f"{label:>12}: {result['records_per_s']:>9,.0f} acked records/s in, "
                    f"server {(tree_cpu_seconds(server.pid) - cpu_before) / wall:.2f} CPU-s/s, "
                    f"RSS {rss_mb(server.pid):.0f} MB"
                )
                if clients is not None and seen_before is not None:
                    seen = clients.latest
                    span = seen[0] - seen_before[0]
                    fanned = (seen[1] - seen_before[1]) / span if span > 0 else 0.0
                    client_cpu = (cpu_seconds(clients.process.pid) - client_cpu_before) / wall
                    line += (
                        f"; out: {fanned:,.0f} records/s to {args.clients} clients "
                        f"({args.follow}), dropped {seen[2] - seen_before[2]:,}, "
                        f"clients {client_cpu:.2f} CPU-s/s"
                    )
                    clients.stop()
                    with_clients.append(result["records_per_s"])
                else:
                    without.append(result["records_per_s"])
                print(line, flush=True)
            base = sum(without) / len(without)
            change = sum(with_clients) / len(with_clients) / base - 1
            print(
                f"ingest with {args.clients} clients ({args.follow}): {change:+.1%} vs the "
                f"mean without (runs without: {min(without):,.0f}-{max(without):,.0f}); "
                f"{args.devices} trackers, {args.records_per_frame} records/frame, default ack "
                "level (spool)"
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


if __name__ == "__main__":
    main()
