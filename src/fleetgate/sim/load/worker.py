"""One generator process: its share of the devices on one uvloop event loop.

It talks to the parent over a pipe. Parent → worker: ``("go", start_at)`` (wall-clock
time), ``("close",)``. Worker → parent, in order: ``("ready", snapshots)`` once every
device connected (or failed to), ``("progress", totals)`` every second while sending,
``("final", WorkerResult)`` after the run and the drain, ``("closed",)``; or
``("failed", text)`` if the process cannot run at all.

Timeline, from ``start_at``: every device begins (spread over one send interval when a
rate is set), after ``warmup_s`` the measurement window opens (counters noted, latency
histogram restarted, own CPU time noted), after ``duration_s`` it closes and sending
stops; frames in flight get ``drain_s`` to be answered, what is still unanswered then is
a missing ack. Connections stay open until the parent says ``close`` (so a server's
count of stored records can be read before disconnects add their own records).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Final

from fleetgate.pki import client_ssl_context
from fleetgate.sim.load import gateways, teltonika
from fleetgate.sim.load.device import PacedDevice
from fleetgate.sim.load.settings import PROTOCOLS, LoadSettings
from fleetgate.sim.load.stats import ProtocolStats, StatsSnapshot
from fleetgate.sim.restamp import StampedVehicleFrame

CONNECTS_AT_ONCE: Final = 100
PROGRESS_INTERVAL_S: Final = 1.0
PING_INTERVAL_S: Final = gateways.KEEPALIVE_S / 2


@dataclass(slots=True)
class WorkerResult:
    """What one process did: per protocol, and its own CPU use in the window."""

    process: int
    stats: dict[str, StatsSnapshot] = field(default_factory=dict)
    window_s: float = 0.0
    cpu_s: float = 0.0


class Worker:
    def __init__(self, settings: LoadSettings, process: int, conn: Connection) -> None:
        self.settings = settings
        self.process = process
        self.conn = conn
        self.stats = {name: ProtocolStats(len(settings.share(name, process))) for name in PROTOCOLS}
        self.devices: dict[str, list[Any]] = {name: [] for name in PROTOCOLS}
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.rng = random.Random(settings.seed * 7919 + process)
        self.measuring: asyncio.Task[WorkerResult] | None = None
        self.helpers: list[asyncio.Task[None]] = []

    def interval(self) -> float:
        return 1.0 / self.settings.rate if self.settings.rate > 0 else 0.0

    # -- set-up ----------------------------------------------------------------------------------
    async def connect_all(self) -> None:
        limit = asyncio.Semaphore(CONNECTS_AT_ONCE)
        jobs: list[Awaitable[bool]] = []
        for job in (*self._trackers(), *self._vehicles(), *self._gateways()):
            jobs.append(self._bounded(limit, job))
        await asyncio.gather(*jobs)

    @staticmethod
    async def _bounded(limit: asyncio.Semaphore, job: Callable[[], Awaitable[bool]]) -> bool:
        async with limit:
            return await job()

    def _trackers(self) -> list[Callable[[], Awaitable[bool]]]:
        settings = self.settings
        share = settings.share("teltonika", self.process)
        if not share:
            return []
        frames = teltonika.frame_pool(
            settings.codec,
            settings.records_per_frame,
            settings.io_elements,
            settings.seed,
            settings.first_imei,
        )
        jobs: list[Callable[[], Awaitable[bool]]] = []
        for index in share:
            tracker = teltonika.Tracker(
                settings.imei(index),
                frames,
                self.rng.randrange(len(frames)),
                self.stats["teltonika"],
                records_per_frame=settings.records_per_frame,
                interval_s=self.interval(),
            )
            self.devices["teltonika"].append(tracker)
            jobs.append(
                partial(
                    teltonika.connect_tracker,
                    settings.host,
                    settings.teltonika_port,
                    tracker,
                    settings.connect_timeout_s,
                )
            )
        return jobs

    def _vehicles(self) -> list[Callable[[], Awaitable[bool]]]:
        settings = self.settings
        share = settings.share("tesla", self.process)
        if not share:
            return []
        # picows is the bench extra's: imported only when vehicles are simulated.
        from fleetgate.sim.load import tesla

        window = settings.tesla_window
        acks, txids = tesla.ack_slots(window), tesla.txid_slots(window)
        pools: dict[str, list[StampedVehicleFrame]] = {}
        contexts: dict[str, Any] = {}
        jobs: list[Callable[[], Awaitable[bool]]] = []
        for index in share:
            creds = settings.vehicle(index)
            if creds.vin not in pools:
                pools[creds.vin] = tesla.frame_pool(creds.vin, window, settings.seed + index)
                contexts[creds.vin] = client_ssl_context(creds.cert, creds.key, settings.ca)
            vehicle = tesla.Vehicle(
                pools[creds.vin],
                acks,
                txids,
                self.stats["tesla"],
                window=window,
                interval_s=self.interval(),
            )
            self.devices["tesla"].append(vehicle)
            jobs.append(
                partial(
                    tesla.connect_vehicle,
                    settings.tesla_target,
                    contexts[creds.vin],
                    vehicle,
                    settings.connect_timeout_s,
                )
            )
        return jobs

    def _gateways(self) -> list[Callable[[], Awaitable[bool]]]:
        settings = self.settings
        share = settings.share("gateways", self.process)
        if not share:
            return []
        ids = gateways.packet_ids(settings.gateway_window)
        context = gateways.broker_tls(settings.broker_url, settings.broker_ca)
        jobs: list[Callable[[], Awaitable[bool]]] = []
        for index in share:
            gateway_id = settings.gateway_id(index)
            gateway = gateways.Gateway(
                f"fleetgate-load-{gateway_id}",
                gateways.message_pool(gateway_id, settings.topic_root, settings.seed + index),
                ids,
                self.stats["gateways"],
                window=settings.gateway_window,
                interval_s=self.interval(),
            )
            self.devices["gateways"].append(gateway)
            jobs.append(
                partial(
                    gateways.connect_gateway,
                    settings.broker_url,
                    context,
                    gateway,
                    settings.connect_timeout_s,
                )
            )
        return jobs

    # -- the run ---------------------------------------------------------------------------------
    def all_devices(self) -> list[PacedDevice]:
        return [device for devices in self.devices.values() for device in devices]

    def send(self, *message: Any) -> None:
        self.conn.send(message)

    def progress(self) -> dict[str, dict[str, int]]:
        return {name: stats.progress() for name, stats in self.stats.items()}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_command)
        await self.connect_all()
        self.send("ready", {name: stats.snapshot() for name, stats in self.stats.items()})
        command = await self.commands.get()
        if command[0] == "go":
            self.measuring = asyncio.create_task(self._measure(command[1]))
            try:
                result = await self.measuring
            except asyncio.CancelledError:  # the parent said "close" (Ctrl-C, a failure)
                pass
            else:
                self.send("progress", self.progress())
                self.send("final", result)
                await self.commands.get()  # ("close",), or the pipe closed
        await self.close_all()
        self.send("closed")

    async def _measure(self, start_at: float) -> WorkerResult:
        """Send from ``start_at`` (wall clock) through the warm-up and the window, then drain."""
        loop = asyncio.get_running_loop()
        start = loop.time() + max(0.0, start_at - time.time())
        await asyncio.sleep(start - loop.time())
        interval = self.interval()
        for device in self.all_devices():
            device.begin(self.rng.uniform(0, interval) if interval else 0.0)
        self.helpers = [
            asyncio.create_task(self._report_progress()),
            asyncio.create_task(self._ping_gateways()),
        ]
        await asyncio.sleep(max(0.0, start + self.settings.warmup_s - loop.time()))
        for stats in self.stats.values():
            stats.start_window()
        window_opened, cpu_before = loop.time(), time.process_time()
        await asyncio.sleep(max(0.0, window_opened + self.settings.duration_s - loop.time()))
        for stats in self.stats.values():
            stats.end_window()
        result = WorkerResult(
            self.process,
            window_s=loop.time() - window_opened,
            cpu_s=time.process_time() - cpu_before,
        )
        for device in self.all_devices():
            device.stop()
        await self._drain()
        self.helpers[0].cancel()  # progress; the gateways' pings go on until they close
        for name, stats in self.stats.items():
            stats.missing_acks = sum(device.waiting for device in self.devices[name])
            result.stats[name] = stats.snapshot()
        return result

    async def _drain(self) -> None:
        """Wait (up to ``drain_s``) until every frame sent has been answered."""
        deadline = asyncio.get_running_loop().time() + self.settings.drain_s
        devices = self.all_devices()
        while any(d.waiting and d.alive for d in devices):
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.01)

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            self.send("progress", self.progress())

    async def _ping_gateways(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            for gateway in self.devices["gateways"]:
                gateway.ping()

    async def close_all(self) -> None:
        for helper in self.helpers:
            helper.cancel()
        for device in self.all_devices():
            device.stop()
            device.close()
        await asyncio.sleep(0.1)  # let the transports flush their goodbyes

    def _on_command(self) -> None:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            message = ("close",)
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
        if message[0] == "close" and self.measuring is not None:
            self.measuring.cancel()  # a no-op once the measurement is over
        self.commands.put_nowait(message)


def worker_main(conn: Connection, settings: LoadSettings, process: int) -> None:
    """Process entry point (multiprocessing spawn)."""
    import uvloop

    # Ctrl-C reaches the whole process group: the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One descriptor per device: thousands of them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        uvloop.run(Worker(settings, process, conn).run())
    except Exception:  # the parent prints it and stops the run
        with contextlib.suppress(OSError):
            conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()
