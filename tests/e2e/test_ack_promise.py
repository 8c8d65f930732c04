"""An ack is a promise: every record a device saw acknowledged survives ``kill -9`` of the
server and an outage of a sink that spans a restart, and reaches the store and the sink.

Real processes: ``fleetgate serve`` as a child process (default ack level ``spool``), real
trackers on TCP (one record per frame, each with a unique timestamp, waiting for its ack
like a Teltonika device), real vehicles over mTLS WebSocket, a private redis-server as the
sink (Redis Streams). The devices remember exactly what they saw acked; after the faults
every one of those records must be in the store and in Redis, at least once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from websockets.asyncio.client import connect

from fleetgate.pki import client_ssl_context, init_pki
from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei
from fleetgate.protocols.teltonika.model import CODEC_8E, AvlRecord
from fleetgate.protocols.tesla.envelope import MESSAGE_STREAM_ACK, parse_envelope
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.store import RecordStore
from tests.integration.conftest import start_private
from tests.integration.services import ManagedProcess, free_port, port_open, redis_server
from tests.integration.tesla.helpers import stream_frame

pytestmark = pytest.mark.e2e

START_S = 1_767_225_600_000  # 2026-01-01: device times the server finds plausible
TRACKERS = 20
VEHICLES = ("5YJ3E1EA7KF000201", "5YJ3E1EA7KF000202")
SETTLE_S = 60.0


class Acked:
    """What the devices saw acknowledged: (device id, created_at ms) pairs."""

    def __init__(self) -> None:
        self.records: set[tuple[str, int]] = set()
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []


async def tracker(port: int, imei: str, first_ms: int, acked: Acked) -> None:
    """A tracker that sends one-record frames and waits for each ack, until told to stop
    or the server goes away."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        writer.write(encode_imei(imei))
        if await reader.readexactly(1) != b"\x01":
            return
        stamp = first_ms
        while not acked.stop.is_set():
            stamp += 1
            record = AvlRecord(stamp, 0, 25.28, 54.69, 100, 90, 9, 40, 0, {239: 1, 66: 12_000})
            writer.write(encode_avl_frame(CODEC_8E, [record]))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readexactly(4), 10)
            if int.from_bytes(ack, "big") == 1:
                acked.records.add((imei, stamp))
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return  # the server went away: what was acked is recorded
    finally:
        writer.close()


async def vehicle(port: int, pki_dir: Path, vin: str, first_ms: int, acked: Acked) -> None:
    """A vehicle sending V frames one at a time (each created_at unique), until stopped."""
    pki = init_pki(pki_dir, host="localhost", vins=[vin])
    cert, key = pki.vehicles[vin]
    context = client_ssl_context(cert, key, pki.ca_cert)
    stamp = first_ms
    try:
        async with await connect(
            f"wss://127.0.0.1:{port}/", ssl=context, open_timeout=10, ping_interval=None
        ) as ws:
            while not acked.stop.is_set():
                stamp += 1000
                await ws.send(
                    stream_frame(
                        txid=f"t{stamp}", sender=f"vehicle_device.{vin}",
                        payload=speed_payload(stamp),
                    )
                )
                reply = parse_envelope(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[arg-type]
                if reply.message_type == MESSAGE_STREAM_ACK:
                    acked.records.add((vin, stamp))
    except Exception:  # the server went away (kill -9): what was acked is recorded
        return


def speed_payload(created_ms: int) -> bytes:
    """A V payload whose created_at (the record's device time) identifies the frame."""
    payload = vd.Payload()
    datum = payload.data.add()
    datum.key = vd.VehicleSpeed
    datum.value.double_value = 42.0
    payload.created_at.FromMilliseconds(created_ms)
    return payload.SerializeToString()


class Fleetgate:
    """``fleetgate serve`` as a child process on a config file, killable and restartable."""

    def __init__(self, base: Path, redis_port: int) -> None:
        self.base = base
        self.tracker_port, self.vehicle_port, self.api_port = free_port(), free_port(), free_port()
        self.pki_dir = base / "pki"
        pki = init_pki(self.pki_dir, host="localhost")
        self.config = base / "config.json"
        self.config.write_text(json.dumps({
            "data_dir": str(base / "data"),
            "teltonika": {"host": "127.0.0.1", "port": self.tracker_port, "udp_enabled": False},
            "api": {"port": self.api_port},
            "host": "127.0.0.1",
            "port": self.vehicle_port,
            "tls": pki.config_snippet()["tls"],
            "namespace": f"promise{os.getpid()}",
            "records": {"*": ["redis"]},
            "redis": {"addrs": [f"127.0.0.1:{redis_port}"], "streams": True},
            "sink_settings": {"retry_max_ms": 200},
        }))
        self.process: subprocess.Popen[str] | None = None
        self.logs: list[str] = []

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetgate", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.base,
        )
        deadline = time.monotonic() + 30
        while not all(port_open(p) for p in (self.tracker_port, self.vehicle_port, self.api_port)):
            assert self.process.poll() is None, self.process.communicate()[0]
            assert time.monotonic() < deadline, "fleetgate did not open its ports"
            time.sleep(0.05)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.logs.append(self.process.communicate(timeout=30)[0])
        self.process = None

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.logs.append(self.process.communicate(timeout=60)[0])
        assert self.process.returncode == 0, self.logs[-1]
        self.process = None

    def stored(self) -> set[tuple[str, int]]:
        store = RecordStore(self.base / "data" / "fleetgate.db")
        try:
            return {
                (device.device_id, _ms(record["created_at"]))
                for device in store.devices()
                for record in store.records(device.device_id, limit=100_000)
                if record["topic"] in ("position", "V")
            }
        finally:
            store.close()


def _ms(text: str) -> int:
    from fleetgate.records import parse_rfc3339_ms

    return parse_rfc3339_ms(text)


def in_redis(redis: Redis, namespace: str) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for topic in ("position", "V"):
        for _id, fields in redis.xrange(f"{namespace}_{topic}"):
            device = fields[b"key"].decode()
            if topic == "position":
                created = _ms(json.loads(fields[b"payload"])["created_at"])
            else:
                created = int(fields[b"txid"].decode().removeprefix("t"))
            found.add((device, created))
    return found


@pytest.fixture
def private_redis_server(tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_private(lambda base: redis_server(base, durable=True), tmp_path)
    try:
        yield proc
    finally:
        proc.destroy()


def start_load(server: Fleetgate, acked: Acked, start_ms: int) -> None:
    """Trackers and vehicles sending until ``acked.stop`` (or until the server is gone)."""
    devices = [
        tracker(server.tracker_port, f"35630704244{n:04d}", start_ms + n * 10**7, acked)
        for n in range(TRACKERS)
    ] + [
        vehicle(server.vehicle_port, server.pki_dir, vin, start_ms + n * 10**9, acked)
        for n, vin in enumerate(VEHICLES)
    ]
    acked.tasks = [asyncio.create_task(device) for device in devices]


async def finish(acked: Acked) -> None:
    acked.stop.set()
    await asyncio.gather(*acked.tasks)


async def settled(check: Any, what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.25)


async def test_kill_9_under_load_loses_nothing_acked(
    tmp_path: Path, private_redis_server: ManagedProcess
) -> None:
    server = Fleetgate(tmp_path, private_redis_server.port)
    redis = Redis(port=private_redis_server.port)
    server.start()
    acked = Acked()
    start_load(server, acked, START_S)
    await asyncio.sleep(3.0)
    server.kill9()  # mid-stream: frames in flight, sinks behind
    await finish(acked)
    assert len(acked.records) > 200, "the load must have been acked before the kill"

    server.start()  # recovery: the spool is checked, consumers resume after their cursors
    namespace = json.loads(server.config.read_text())["namespace"]
    await settled(lambda: acked.records <= server.stored(), "acked records missing in the store")
    await settled(lambda: acked.records <= in_redis(redis, namespace),
                  "acked records missing in Redis")
    server.terminate()
    redis.close()


async def test_a_sink_outage_across_a_restart_loses_nothing_acked(
    tmp_path: Path, private_redis_server: ManagedProcess
) -> None:
    server = Fleetgate(tmp_path, private_redis_server.port)
    redis = Redis(port=private_redis_server.port)
    namespace = json.loads(server.config.read_text())["namespace"]
    server.start()
    acked = Acked()
    start_load(server, acked, START_S)
    await asyncio.sleep(1.0)
    private_redis_server.stop()  # the sink goes down under load; devices keep being acked
    await asyncio.sleep(2.0)
    await finish(acked)
    during_outage = len(acked.records)
    server.terminate()  # a restart during the outage: the backlog stays spooled
    assert "unconfirmed at shutdown (spooled, delivered after the restart)" in server.logs[-1]

    server.start()
    second = Acked()
    start_load(server, second, START_S + 5 * 10**9)
    await asyncio.sleep(1.0)
    await finish(second)
    private_redis_server.start()  # the sink is back: everything acked arrives
    everything = acked.records | second.records
    assert during_outage > 0 and len(second.records) > 0
    await settled(lambda: everything <= in_redis(redis, namespace),
                  "acked records missing in Redis after the outage")
    await settled(lambda: everything <= server.stored(), "acked records missing in the store")
    server.terminate()
    redis.close()
