"""Memory of ``fleetgate serve`` (issue 11): idle RSS, RSS per connected vehicle and per tracker.

Each figure comes from a fresh ``fleetgate serve`` on the embedded defaults (no config file:
Teltonika TCP+UDP, Tesla with the development CA, the API, the store, the spool), its ports
moved to free loopback ports by environment variables. The load runs in this process on
uvloop, over loopback:

* **idle**: RSS, PSS and USS (``/proc/PID/smaps_rollup``) once the server is up and quiet.
* **vehicles**: ``--vehicles`` mTLS WebSocket connections (one client certificate of the
  development CA the server uses), held without traffic; RSS growth / connections.
* **trackers**: ``--trackers`` TCP connections, each through the IMEI handshake and one
  acknowledged codec 8E frame (one record), then held; RSS growth / connections.

Baselines, measured in the same run: a bare ``websockets`` server (same TLS context, same
library defaults, uvloop) for vehicles, a bare asyncio protocol that answers the handshake
and the frame's ack for trackers. The connection caps are raised for N above the default
(half the descriptors: ~9,900 at 20,000).

Run: ``.venv/bin/python bench/memory.py [--trackers 10000] [--vehicles 2000] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetgate.pki import DevPki

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.integration.services: free ports, waiting for one

from tests.integration.services import free_port, wait_port  # noqa: E402

VIN = "5YJ3E1EA7KF000001"
FIRST_IMEI = 356307042440000
SETTLE_S = 3.0
CONNECT_CONCURRENCY = 100


def memory_kb(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private pages) of ``pid``, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": values["Rss"], "pss": values["Pss"],
            "uss": values["Private_Clean"] + values["Private_Dirty"]}


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Ports:
    def __init__(self) -> None:
        self.tracker, self.vehicle, self.api = free_port(), free_port(), free_port()


def start_fleetgate(
    base: Path, pki: DevPki, ports: Ports, cap: int, src: Path | None = None
) -> subprocess.Popen[bytes]:
    """``fleetgate serve`` with no config file; the dev PKI is made beforehand in its data dir.
    ``src``: another source tree to run (a ``src`` folder put first on ``PYTHONPATH``)."""
    env = {
        **os.environ,
        **({"PYTHONPATH": str(src)} if src is not None else {}),
        "FLEETGATE_DATA_DIR": str(base),
        "FLEETGATE_HOST": "127.0.0.1",
        "FLEETGATE_PORT": str(ports.vehicle),
        "FLEETGATE_TELTONIKA__HOST": "127.0.0.1",
        "FLEETGATE_TELTONIKA__PORT": str(ports.tracker),
        "FLEETGATE_API__PORT": str(ports.api),
    }
    if cap:
        env["FLEETGATE_TELTONIKA__MAX_CONNECTIONS"] = str(cap)
        env["FLEETGATE_TESLA__MAX_CONNECTIONS"] = str(cap)
    log = open(base / "server.log", "wb")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetgate", "serve"], env=env, cwd=base,
        stdout=log, stderr=subprocess.STDOUT,
    )
    for port in (ports.tracker, ports.vehicle, ports.api):
        wait_port(port, process, timeout=60)
    return process


def start_baseline(kind: str, port: int, pki: DevPki) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-baseline", kind, "--port", str(port),
         "--pki", str(pki.directory)], cwd=ROOT,
    )
    wait_port(port, process, timeout=60)
    return process


# -- the baselines (run in a child process) ---------------------------------------------------
class BareTracker(asyncio.Protocol):
    """Accept any IMEI, ack every frame with its record count (byte 9 of a TCP AVL frame)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()
        self.logged_in = False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.logged_in:
            if len(self.buffer) >= 2 and len(self.buffer) >= 2 + int.from_bytes(self.buffer[:2]):
                del self.buffer[: 2 + int.from_bytes(self.buffer[:2])]
                self.logged_in = True
                self.transport.write(b"\x01")
            return
        while len(self.buffer) >= 8:
            size = 12 + int.from_bytes(self.buffer[4:8])
            if len(self.buffer) < size:
                return
            count = self.buffer[9]
            del self.buffer[:size]
            self.transport.write(count.to_bytes(4, "big"))


async def serve_baseline(kind: str, port: int, pki_dir: Path) -> None:
    stopped = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set_result, None)
    if kind == "tcp":
        server = await asyncio.get_running_loop().create_server(BareTracker, "127.0.0.1", port)
        async with server:
            await stopped
        return
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki_dir / "server.crt", pki_dir / "server.key")
    context.load_verify_locations(pki_dir / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    async with serve(handler, "127.0.0.1", port, ssl=context, compression=None):
        await stopped


# -- the load (this process) -------------------------------------------------------------------
async def hold(count: int, open_one: Callable[[int], Awaitable[object | None]],
               pid: int) -> dict[str, float]:
    """Open ``count`` connections, let the server settle, measure, close them.

    One connection first: what a server loads on first use (the Tesla frame processing,
    cryptography for the vehicle's certificate) is reported as ``first_kb``, not spread
    over the ``count`` connections measured after it."""
    await asyncio.sleep(SETTLE_S)
    idle = memory_kb(pid)
    first = await open_one(count)
    await asyncio.sleep(SETTLE_S)
    before = memory_kb(pid)
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(index: int) -> object | None:
        async with limit:
            try:
                return await open_one(index)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, Exception):
                return None

    started = time.perf_counter()
    held = [c for c in await asyncio.gather(*(one(n) for n in range(count))) if c is not None]
    connect_s = time.perf_counter() - started
    await asyncio.sleep(SETTLE_S)
    after = memory_kb(pid)
    for conn in [*held, first]:
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()
    await asyncio.sleep(0.5)
    return {"held": len(held), "connect_s": connect_s, "before": before["rss"],
            "after": after["rss"], "first_kb": before["rss"] - idle["rss"],
            "per_kb": (after["rss"] - before["rss"]) / max(len(held), 1)}


def vehicle_opener(port: int, pki: DevPki) -> Callable[[int], Awaitable[object | None]]:
    from websockets.asyncio.client import connect

    from fleetgate.pki import client_ssl_context

    cert, key = pki.vehicles[VIN]
    context = client_ssl_context(cert, key, pki.ca_cert)

    async def open_one(_: int) -> object:
        return await connect(
            f"wss://127.0.0.1:{port}/", ssl=context, compression=None, ping_interval=None,
            open_timeout=120, additional_headers={"X-Network-Interface": "wifi"},
        )

    return open_one


class TrackerConn:
    """Keeps the stream objects: a collected StreamWriter closes its connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.transport = reader, writer, writer.transport


def tracker_opener(port: int) -> Callable[[int], Awaitable[object | None]]:
    from fleetgate.protocols.teltonika.encoder import encode_imei
    from fleetgate.sim.load.teltonika import frame_pool

    frame = frame_pool("8E", 1, 10, seed=1, first_imei=FIRST_IMEI)[0]

    async def open_one(index: int) -> object | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_imei(str(FIRST_IMEI + index)))
        if await asyncio.wait_for(reader.readexactly(1), 60) != b"\x01":
            writer.transport.abort()
            return None
        writer.write(frame)
        if await asyncio.wait_for(reader.readexactly(4), 60) != (1).to_bytes(4, "big"):
            writer.transport.abort()
            return None
        return TrackerConn(reader, writer)

    return open_one


def run(coro: Awaitable[dict[str, float]]) -> dict[str, float]:
    import uvloop

    return uvloop.run(coro)  # type: ignore[arg-type]


def line(label: str, result: dict[str, float], count: int) -> str:
    return (f"  {label:<36} {result['held']:>6.0f}/{count} in {result['connect_s']:5.1f}s  "
            f"RSS {result['before'] / 1024:6.1f} -> {result['after'] / 1024:6.1f} MiB  "
            f"= {result['per_kb']:5.1f} KiB per connection  "
            f"(first connection +{result['first_kb'] / 1024:.1f} MiB)")


def idle_only(repeat: int, compare: Path | None) -> None:
    """Idle figures alone, this tree and ``compare`` alternating within each run."""
    from fleetgate.pki import init_pki

    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if compare is not None:
        trees.insert(0, (str(compare), compare))
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(1, repeat + 1):
            for label, src in trees:
                data = Path(tmp) / f"i{attempt}-{len(label)}"
                pki = init_pki(data / "tesla-dev-ca", host="localhost", vins=[VIN])
                ports = Ports()
                server = start_fleetgate(data, pki, ports, 0, src)
                try:
                    time.sleep(SETTLE_S)
                    idle = memory_kb(server.pid)
                finally:
                    stop(server)
                print(f"run {attempt} idle {label:<24} RSS {idle['rss'] / 1024:.1f} MiB, "
                      f"PSS {idle['pss'] / 1024:.1f} MiB, USS {idle['uss'] / 1024:.1f} MiB",
                      flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vehicles", type=int, default=2000)
    parser.add_argument("--trackers", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--idle-only", action="store_true",
                        help="only the idle figures (no connections)")
    parser.add_argument("--compare", type=Path, metavar="SRC",
                        help="also run the fleetgate in SRC (a copy of an older src/ "
                        "folder), alternating with this tree in each run")
    parser.add_argument("--serve-baseline", choices=("tcp", "ws"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve_baseline:
        import uvloop

        uvloop.run(serve_baseline(args.serve_baseline, args.port, args.pki))
        return
    if args.idle_only:
        idle_only(args.repeat, args.compare)
        return
    from fleetgate.pki import init_pki

    most = max(args.vehicles, args.trackers)
    if most + 200 > hard:
        sys.exit(f"{most} connections need more than the descriptor limit {hard}")
    cap = most + 100 if most > hard // 2 - 200 else 0
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}   (fd limit {hard})")
    trees: list[tuple[str, Path | None]] = [("", None)]
    if args.compare is not None:
        trees = [(f" ({args.compare})", args.compare), (" (this tree)", None)]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for attempt in range(1, args.repeat + 1):
            print(f"run {attempt}:")
            for number, (tree, src) in enumerate(trees):
                data = base / f"v{attempt}-{number}"
                pki = init_pki(data / "tesla-dev-ca", host="localhost", vins=[VIN])
                ports = Ports()
                server = start_fleetgate(data, pki, ports, cap, src)
                try:
                    time.sleep(SETTLE_S)
                    idle = memory_kb(server.pid)
                    print(f"  idle fleetgate serve{tree:<9} RSS {idle['rss'] / 1024:.1f} MiB, "
                          f"PSS {idle['pss'] / 1024:.1f} MiB, USS {idle['uss'] / 1024:.1f} MiB")
                    if args.vehicles:
                        result = run(hold(args.vehicles, vehicle_opener(ports.vehicle, pki),
                                          server.pid))
                        print(line(f"vehicles, fleetgate{tree}", result, args.vehicles))
                finally:
                    stop(server)
            if args.vehicles and not args.skip_baseline:
                port = free_port()
                measure_held("vehicles, bare websockets", start_baseline("ws", port, pki),
                             vehicle_opener(port, pki), args.vehicles)
            for number, (tree, src) in enumerate(trees if args.trackers else []):
                data = base / f"t{attempt}-{number}"
                pki = init_pki(data / "tesla-dev-ca", host="localhost", vins=[VIN])
                ports = Ports()
                measure_held(f"trackers, fleetgate{tree}",
                             start_fleetgate(data, pki, ports, cap, src),
                             tracker_opener(ports.tracker), args.trackers)
            if args.trackers and not args.skip_baseline:
                port = free_port()
                measure_held("trackers, bare asyncio", start_baseline("tcp", port, pki),
                             tracker_opener(port), args.trackers)
            sys.stdout.flush()

def measure_held(
    label: str,
    server: subprocess.Popen[bytes],
    opener: Callable[[int], Awaitable[object | None]],
    count: int,
) -> None:
    """Hold ``count`` connections from ``opener`` on ``server``, print the line, stop it."""
    try:
        print(line(label, run(hold(count, opener, server.pid)), count))
    finally:
        stop(server)


if __name__ == "__main__":
    main()
