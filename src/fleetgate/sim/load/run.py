"""Run a load test: start the generator processes, steer them, merge what they measured.

The parent process does no device work. It waits for the server's ports, spawns
``processes`` workers (multiprocessing *spawn*: a clean interpreter each, one uvloop loop
each), waits until every device has connected, reads the stored-record baseline from the
API, tells every worker the same wall-clock start time, prints a progress line every
second, samples the server's CPU time at the window's edges and its RSS at the end, then
collects each worker's figures, waits for the store to catch up, and lets the workers
disconnect.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Final

from fleetgate.mqtt_settings import MqttIngestConfig
from fleetgate.sim.load import procstats, stored
from fleetgate.sim.load.report import LoadReport, ServerFigures, progress_line
from fleetgate.sim.load.settings import PROTOCOLS, LoadSettings, LoadSettingsError
from fleetgate.sim.load.stats import StatsSnapshot
from fleetgate.sim.load.worker import WorkerResult, worker_main

START_DELAY_S: Final = 0.3  # from "go" to the first send: every worker hears it in time
JOIN_TIMEOUT_S: Final = 10.0

Progress = Callable[[str], None]


class LoadRunError(RuntimeError):
    """The run could not go ahead (a worker failed, the server is not there)."""


def wait_for_ports(settings: LoadSettings) -> None:
    """Wait until every port the run needs accepts TCP (a server that is still starting)."""
    targets = []
    if settings.teltonika:
        targets.append((settings.host, settings.teltonika_port))
    if settings.tesla:
        from urllib.parse import urlsplit

        parts = urlsplit(settings.tesla_target)
        targets.append((parts.hostname or settings.host, parts.port or 443))
    if settings.gateways:
        address = MqttIngestConfig.parse_url(settings.broker_url)
        targets.append((address.host, address.port))
    deadline = time.monotonic() + settings.connect_timeout_s
    for host, port in targets:
        while True:
            try:
                socket.create_connection((host, port), timeout=1.0).close()
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise LoadRunError(
                        f"nothing accepts connections on {host}:{port}: {exc}"
                    ) from None
                time.sleep(0.1)


class _Workers:
    """The worker processes and their pipes."""

    def __init__(self, settings: LoadSettings) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess] = []
        self.pipes: list[Connection] = []
        for index in range(settings.processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(child, settings, index),
                name=f"fleetgate-load-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)
        self.latest: list[dict[str, dict[str, int]]] = [{} for _ in self.pipes]
        self.inbox: list[list[tuple[Any, ...]]] = [[] for _ in self.pipes]
        self.open = set(range(len(self.pipes)))

    def broadcast(self, *message: Any) -> None:
        for index in self.open:
            with contextlib.suppress(OSError):
                self.pipes[index].send(message)

    def pump(self, timeout: float) -> None:
        """Read what the workers sent (waiting up to ``timeout`` for the first message)."""
        pipes = [self.pipes[index] for index in self.open]
        if not pipes:
            time.sleep(timeout)
            return
        for pipe in wait(pipes, timeout=timeout):
            assert isinstance(pipe, Connection)
            index = self.pipes.index(pipe)
            while index in self.open and pipe.poll():
                try:
                    message = pipe.recv()
                except (EOFError, OSError):
                    self.open.discard(index)
                    break
                if message[0] == "failed":
                    raise LoadRunError(f"generator process {index} failed:\n{message[1]}")
                if message[0] == "progress":
                    self.latest[index] = message[1]
                else:
                    self.inbox[index].append(message)

    def collect(
        self, kind: str, deadline: float, on_tick: Callable[[], None] | None = None
    ) -> list[Any]:
        """Each worker's ``kind`` message (its payload), in worker order."""
        results: dict[int, Any] = {}
        while True:
            for index, inbox in enumerate(self.inbox):
                for message in inbox:
                    if message[0] == kind and index not in results:
                        results[index] = message[1] if len(message) > 1 else None
                        inbox.remove(message)
                        break
            if len(results) == len(self.pipes):
                return [results[index] for index in sorted(results)]
            gone = [i for i in range(len(self.pipes)) if i not in self.open and i not in results]
            if gone:
                raise LoadRunError(f"generator process {gone[0]} ended unexpectedly")
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadRunError(f"generator processes did not report {kind!r} in time")
            self.pump(min(left, 0.05))
            if on_tick is not None:
                on_tick()

    def totals(self) -> dict[str, dict[str, int]]:
        summed: dict[str, dict[str, int]] = {}
        for progress in self.latest:
            for protocol, counters in progress.items():
                target = summed.setdefault(protocol, {})
                for name, value in counters.items():
                    target[name] = target.get(name, 0) + value
        return summed

    def stop(self) -> None:
        for process in self.processes:
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                process.terminate()  # by its own pid
                process.join(JOIN_TIMEOUT_S)
        for pipe in self.pipes:
            pipe.close()


class _Ticker:
    """One progress line per second, and the server's CPU at the window's edges."""

    def __init__(
        self, settings: LoadSettings, workers: _Workers, progress: Progress | None
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.progress = progress
        # Ticks just after the workers' own (each second from the start): fresh totals.
        self.started = time.monotonic() + START_DELAY_S
        self.next_tick = self.started + 1.1
        self.last_time = self.started
        self.last: dict[str, dict[str, int]] = {}
        self.pid = settings.server_pid
        self.last_cpu = self._server_cpu()

    def _server_cpu(self) -> float | None:
        if self.pid is None:
            return None
        try:
            return procstats.tree_cpu_seconds(self.pid)
        except OSError:
            return None

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self.next_tick:
            return
        self.next_tick += 1.0
        totals = self.workers.totals()
        elapsed = now - self.last_time
        rates: dict[str, float] = {}
        for name in PROTOCOLS:
            if self.settings.count(name):
                key = "acked_records" if name == "teltonika" else "acked_frames"
                before = self.last.get(name, {}).get(key, 0)
                rates[name] = (totals.get(name, {}).get(key, 0) - before) / elapsed
        errors = sum(counters.get("errors", 0) for counters in totals.values())
        cpu = self._server_cpu()
        server = None
        if cpu is not None and self.last_cpu is not None:
            server = (cpu - self.last_cpu) / elapsed
        self.last, self.last_time, self.last_cpu = totals, now, cpu
        if self.progress is not None:
            self.progress(progress_line(now - self.started, rates, errors, server))


def run_load(settings: LoadSettings, progress: Progress | None = None) -> LoadReport:
    """Run the load described by ``settings``; ``progress`` gets a line every second."""
    settings.check()
    if settings.server_pid is not None and not procstats.process_exists(settings.server_pid):
        raise LoadSettingsError(f"--server-pid {settings.server_pid}: no such process")
    wait_for_ports(settings)
    ids = stored.device_ids(settings)
    workers = _Workers(settings)
    try:
        return _steer(settings, workers, ids, progress)
    finally:
        workers.broadcast("close")
        workers.stop()


def _steer(
    settings: LoadSettings,
    workers: _Workers,
    ids: dict[str, set[str]],
    progress: Progress | None,
) -> LoadReport:
    # Spawning and connecting thousands of TLS devices takes a while; bounded all the same.
    ready_by = time.monotonic() + settings.connect_timeout_s + 60
    workers.collect("ready", ready_by)
    baseline: dict[str, int] | None = None
    stored_error = None
    if settings.api:
        try:
            baseline = stored.wait_stable(
                lambda: stored.read_counts(settings.api or "", ids, settings.api_token)
            )
        except stored.ApiError as exc:
            stored_error = str(exc)
    start_at = time.time() + START_DELAY_S
    workers.broadcast("go", start_at)
    ticker = _Ticker(settings, workers, progress)
    pid = settings.server_pid
    window_opens = time.monotonic() + START_DELAY_S + settings.warmup_s
    window_closes = window_opens + settings.duration_s
    # The server's CPU is read at the window's edges, while the workers are running.
    cpu_before = cpu_after = rss = None
    opened = closed = 0.0
    while time.monotonic() < window_closes:
        now = time.monotonic()
        if pid is not None and cpu_before is None and now >= window_opens:
            cpu_before, opened = procstats.tree_cpu_seconds(pid), now
        workers.pump(min(0.05, max(0.0, window_closes - now)))
        ticker()
    if pid is not None and cpu_before is not None and procstats.process_exists(pid):
        cpu_after, closed = procstats.tree_cpu_seconds(pid), time.monotonic()
        rss = procstats.tree_rss_bytes(pid)
    final_by = time.monotonic() + settings.drain_s + 30
    results: list[WorkerResult] = workers.collect("final", final_by, ticker)
    report = _merge(settings, results)
    if pid is not None and cpu_before is not None and cpu_after is not None and rss is not None:
        report.server = ServerFigures(
            pid, len(procstats.tree_pids(pid)), (cpu_after - cpu_before) / (closed - opened), rss
        )
    if settings.api and baseline is not None:
        expected = {
            name: snap.totals.get("acked_records" if name == "teltonika" else "acked_frames", 0)
            for name, snap in report.protocols.items()
        }
        try:
            found = stored.wait_caught_up(
                lambda: stored.read_counts(settings.api or "", ids, settings.api_token),
                baseline,
                expected,
                settings.settle_s,
            )
        except stored.ApiError as exc:
            stored_error = str(exc)
        else:
            report.stored = {name: found.counts[name] for name in report.protocols}
            report.stored_caught_up = found.caught_up
            report.stored_waited_s = found.waited_s
    report.stored_error = stored_error
    workers.broadcast("close")
    with contextlib.suppress(LoadRunError):
        workers.collect("closed", time.monotonic() + JOIN_TIMEOUT_S)
    return report


def _merge(settings: LoadSettings, results: list[WorkerResult]) -> LoadReport:
    window = max((result.window_s for result in results), default=settings.duration_s)
    cpu = sum(result.cpu_s for result in results)
    report = LoadReport(
        settings=settings.public(),
        window_s=window,
        generator_processes=len(results),
        generator_cpu_per_s=cpu / window if window else 0.0,
    )
    for name in PROTOCOLS:
        if settings.count(name):
            report.protocols[name] = StatsSnapshot.combined([r.stats[name] for r in results])
    return report
