"""Tesla listener: acknowledged frames/s over mTLS WebSocket, and RSS per idle vehicle.

The server runs as ``fleetgate serve`` in its own process (uvloop, records ``V`` → logger at
log level warn, the embedded store on, default ack level "spool": every ack waits for the durable
spool). The load generator runs in this process on uvloop, over loopback:

* **throughput**: ``--vehicles`` connections (mTLS, one client certificate each from a dev
  PKI) each keep ``--window`` frames in flight; a frame is a real envelope around a
  ``vehicle_data.Payload`` of 10 signals; every reply must be an ack (message_type 5).
  Reported: acked frames per second, server CPU seconds per wall second.
* **idle memory**: ``--idle`` connections (one shared client certificate) are opened and
  held without traffic; reported: server RSS growth divided by the number of connections.

On a 2-core machine the generator and the server share the cores; the server's CPU use is
printed next to the throughput so the figure can be read per server core.

Run: ``.venv/bin/python bench/tesla_ws.py [--vehicles 20] [--window 16] [--seconds 15]
[--idle 1000 --idle 10000]`` (``--idle 0`` skips the memory part; ``BENCH_PROFILE=FILE``
runs the server under cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_speed import describe as machine_speed
from procstats import cpu_seconds, free_port, rss_mb
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fleetgate.pki import DevPki, client_ssl_context, init_pki
from fleetgate.protocols.tesla.envelope import MESSAGE_STREAM_ACK, parse_envelope
from fleetgate.sim.tesla import VehicleModel, build_vehicle_frame

ROOT = Path(__file__).resolve().parents[1]








def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Stats:
    def __init__(self) -> None:
        self.acked = 0
        self.other = 0
        self.lost = 0


async def open_vehicle(url: str, context: ssl.SSLContext) -> ClientConnection:
    return await connect(
        url, ssl=context, compression=None, ping_interval=None, open_timeout=60,
        additional_headers={"X-Network-Interface": "wifi", "Version": "1.0.0"},
    )


async def drive(ws: ClientConnection, frames: list[bytes], window: int, stats: Stats,
                running: list[bool]) -> None:
    """Keep ``window`` frames in flight on one connection until told to stop."""
    credit = asyncio.Semaphore(window)

    async def receive() -> None:
        async for message in ws:
            assert isinstance(message, bytes)
            if parse_envelope(message).message_type == MESSAGE_STREAM_ACK:
                stats.acked += 1
            else:
                stats.other += 1
            credit.release()

    receiver = asyncio.create_task(receive())
    index = 0
    try:
        while running[0]:
            await credit.acquire()
            await ws.send(frames[index % len(frames)])
            index += 1
        for _ in range(window):  # wait for what is in flight
            await asyncio.wait_for(credit.acquire(), 30)
    except (ConnectionClosed, TimeoutError):
        stats.lost += 1
    finally:
        receiver.cancel()
        await ws.close()


async def throughput(url: str, pki: DevPki, vehicles: int, window: int,
                     seconds: float, server_pid: int) -> dict[str, float]:
    stats = Stats()
    running = [True]
    vins = list(pki.vehicles)
    connections = []
    tasks = []
    for index in range(vehicles):
        cert, key = pki.vehicles[vins[index % len(vins)]]
        ws = await open_vehicle(url, client_ssl_context(cert, key, pki.ca_cert))
        model = VehicleModel(vins[index % len(vins)], random.Random(index))
        frames = [build_vehicle_frame(model, f"{index}-{n}", time.time()) for n in range(64)]
        connections.append(ws)
        tasks.append(asyncio.create_task(drive(ws, frames, window, stats, running)))
    await asyncio.sleep(3.0)  # warm-up
    start_acked, started = stats.acked, time.perf_counter()
    cpu_before = cpu_seconds(server_pid)
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    acked = stats.acked - start_acked
    server_cpu = (cpu_seconds(server_pid) - cpu_before) / elapsed
    running[0] = False
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"frames_per_s": acked / elapsed, "server_cpu": server_cpu,
            "other": stats.other, "lost": stats.lost}


async def idle(url: str, pki: DevPki, count: int, server_pid: int) -> dict[str, float]:
    vin = next(iter(pki.vehicles))
    cert, key = pki.vehicles[vin]
    context = client_ssl_context(cert, key, pki.ca_cert)
    await asyncio.sleep(1.0)
    before = rss_mb(server_pid)
    limit = asyncio.Semaphore(100)
    started = time.perf_counter()

    async def one() -> ClientConnection | None:
        async with limit:
            try:
                return await open_vehicle(url, context)
            except (OSError, TimeoutError, ConnectionClosed):
                return None

    opened = await asyncio.gather(*(one() for _ in range(count)))
    connect_s = time.perf_counter() - started
    held = [ws for ws in opened if ws is not None]
    await asyncio.sleep(3.0)  # let the server settle (connectivity records, GC)
    after = rss_mb(server_pid)
    for ws in held:
        ws.transport.abort()
    await asyncio.sleep(1.0)
    return {"connected": len(held), "rss_before": before, "rss_after": after,
            "per_conn_kb": (after - before) * 1024 / max(len(held), 1), "connect_s": connect_s}


def start_server(data_dir: Path, pki: DevPki, port: int, log_level: str) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "config.json"
    config.write_text(json.dumps({
        "data_dir": str(data_dir / "data"), "log_level": log_level,
        "api": {"enabled": False}, "teltonika": {"enabled": False},
        "host": "127.0.0.1", "port": port, "namespace": "bench",
        "records": {"V": ["logger"], "connectivity": ["logger"]},
        "tls": pki.config_snippet()["tls"],
    }))
    # BENCH_PROFILE=FILE runs the server under cProfile (stats written on shutdown).
    profile = os.environ.get("BENCH_PROFILE")
    wrapper = ["-m", "cProfile", "-o", profile] if profile else []
    server = subprocess.Popen(
        [sys.executable, *wrapper, "-m", "fleetgate", "serve", "--config", str(config)], cwd=ROOT,
    )
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("server did not start")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vehicles", type=int, default=20)
    parser.add_argument("--window", type=int, default=16, help="frames in flight per vehicle")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--idle", type=int, action="append",
                        help="idle connections to hold (repeat; default 1000; 0 skips)")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    idle_counts = args.idle or [1000]
    fd_limit = raise_fd_limit()
    print(machine_speed(), flush=True)  # before any server runs: the core's own speed
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        vins = [f"5YJ3E1EA7KF{n:06d}" for n in range(min(args.vehicles, 100))]
        pki = init_pki(base / "pki", host="localhost", vins=vins)
        if not args.skip_throughput:
            port = free_port()
            server = start_server(base / "t", pki, port, "warn")
            try:
                result = uvloop.run(throughput(f"wss://127.0.0.1:{port}/", pki, args.vehicles,
                                               args.window, args.seconds, server.pid))
                print(
                    f"throughput: {args.vehicles} vehicles x {args.window} frames in flight, "
                    f"10 signals/frame: {result['frames_per_s']:,.0f} acked frames/s "
                    f"(default ack level, spool); server {result['server_cpu']:.2f} CPU-s/s "
                    f"= {result['frames_per_s'] / result['server_cpu']:,.0f} per CPU-s, "
                    f"RSS {rss_mb(server.pid):.0f} MB; non-ack replies={result['other']:.0f} "
                    f"lost={result['lost']:.0f}"
                )
            finally:
                stop_server(server)
        for count in idle_counts:
            if count <= 0:
                continue
            if count + 100 > fd_limit:
                print(f"idle {count}: skipped, fd limit {fd_limit}")
                continue
            port = free_port()
            server = start_server(base / f"i{count}", pki, port, "warn")
            try:
                result = uvloop.run(idle(f"wss://127.0.0.1:{port}/", pki, count, server.pid))
                print(
                    f"idle: {result['connected']:.0f}/{count} vehicles connected in "
                    f"{result['connect_s']:.1f}s; server RSS {result['rss_before']:.0f} → "
                    f"{result['rss_after']:.0f} MB = {result['per_conn_kb']:.1f} KB per idle vehicle"
                )
            finally:
                stop_server(server)


if __name__ == "__main__":
    main()
