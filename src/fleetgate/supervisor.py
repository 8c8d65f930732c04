"""``workers`` > 1: one supervisor process runs N worker processes on the same ports.

One fleetgate process runs one event loop on one core (the GIL). To use a machine's cores,
the supervisor starts N identical workers ("spawn": fresh interpreters, no forked loop
state). Every device listener binds with SO_REUSEPORT, so the kernel spreads incoming
connections over the workers. Each worker writes a store file of its own
(``fleetgate.wN.db`` beside the configured one; worker 0 the configured file) and feeds the
other configured sinks. Worker 0 alone also serves the HTTP API and the monitoring port:
its API reads every worker's store file, so it sees every worker's devices.

Metrics: the supervisor points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the
workers start; ``/metrics`` then sums every worker's counters (see
:mod:`fleetgate.observability.metrics`). The directory is removed on exit.

Failures: a worker that dies before all workers are ready aborts the start (exit 1). A
worker that dies later is logged and restarted; more than :data:`MAX_RESTARTS` restarts in
:data:`RESTART_WINDOW_S` seconds means something is persistently wrong, so the supervisor
stops the others and exits 1 for the service manager to see. SIGTERM/SIGINT are forwarded
to the workers as SIGTERM; each drains (listeners stop, the pipeline flushes) and exits.
SIGHUP is forwarded as it is (the Tesla listener reloads its certificate).

Workers die with their supervisor: a supervisor killed with SIGKILL cannot forward
anything, so each worker asks the kernel for a SIGTERM when its parent dies
(``PR_SET_PDEATHSIG`` on Linux), checks right after that the parent is still the one
that started it (it may have died before the request took effect), and polls its parent
id every :data:`PARENT_CHECK_S` seconds where the kernel offers no such request. Either
way the worker drains as on a normal SIGTERM, and the ports are free for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from fleetgate.config import Config, ConfigError
from fleetgate.observability.logging import fields
from fleetgate.store import shard_path

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

log = logging.getLogger("fleetgate.supervisor")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
START_TIMEOUT_S = 60.0
# A worker drains before it exits; beyond this it is killed.
STOP_TIMEOUT_S = 60.0
# Exit codes of a worker that ended because it was told to.
_STOPPED_CODES = {0, -signal.SIGTERM, -signal.SIGINT}
# How often a worker checks that its supervisor is alive (besides PR_SET_PDEATHSIG).
PARENT_CHECK_S = 1.0


def check_config(config: Config) -> None:
    """What cannot be shared by several workers, refused at start with one line."""
    if config.teltonika.enabled and config.teltonika.port == 0:
        raise ConfigError("teltonika.port: workers > 1 need a fixed port (0 picks one per worker)")
    if config.tesla_enabled and config.port == 0:
        raise ConfigError("port: workers > 1 need a fixed port (0 picks one per worker)")
    ingest = config.mqtt_ingest
    if ingest is not None and ingest.enabled and not ingest.shared_group:
        raise ConfigError(
            "mqtt_ingest.shared_group: workers > 1 need a shared subscription, "
            "or every worker would receive every gateway message"
        )
    routed = {sink for sinks in config.records.values() for sink in sinks}
    if "zmq" in routed:
        raise ConfigError("records: the zmq sink binds one address; it cannot run in workers > 1")


def worker_config(config: Config, index: int) -> Config:
    """Worker 0 runs as configured; the others leave the API and monitoring port to it."""
    if index == 0:
        return config
    update: dict[str, Any] = {
        # Record ids stay unique: every worker has its own spool, so its own offsets.
        "node_id": f"{config.node_id or socket.gethostname()}-w{index}",
        "api": config.api.model_copy(update={"enabled": False}),
        # Each worker writes its own store file (no write lock to take turns on); worker 0,
        # which serves the API, reads them all.
        "store": config.store.model_copy(
            update={"path": str(shard_path(config.store_path, index))}
        ),
        # One spool per worker too: each worker's ledger is its own (spool.w1, ...).
        "spool": config.spool.model_copy(
            update={"path": str(config.spool_path.with_name(f"{config.spool_path.name}.w{index}"))}
        ),
    }
    if config.monitoring is not None:
        update["monitoring"] = config.monitoring.model_copy(
            update={"prometheus_metrics_port": 0}
        )
    if config.mqtt_ingest is not None:
        # Every worker needs a session of its own; shared_group splits the stream.
        ingest = config.mqtt_ingest
        update["mqtt_ingest"] = ingest.model_copy(
            update={"client_id": f"{ingest.client_id}-w{index}"}
        )
    return config.model_copy(update=update)


class _WorkerField(logging.Filter):
    """Adds ``worker=<index>`` to every log line of a worker process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        extra = getattr(record, "fields", None)
        record.fields = {**extra, "worker": self.index} if isinstance(extra, dict) else {
            "worker": self.index
        }
        return True


def die_with_parent(parent_pid: int) -> bool:
    """Ask for SIGTERM when the parent dies; False if ``parent_pid`` is gone already.

    ``PR_SET_PDEATHSIG`` (Linux) makes the kernel send the signal the moment the parent
    exits, even by SIGKILL. A parent that died before the request took effect is seen by
    the check that follows it: the process has been re-parented.
    """
    from fleetgate.lifetime import signal_on_parent_death  # workers only (ctypes)

    try:
        signal_on_parent_death(signal.SIGTERM)
    except OSError as exc:  # no prctl: the poll still works
        log.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    return os.getppid() == parent_pid


async def _watch_parent(parent_pid: int) -> None:
    """SIGTERM to ourselves once the supervisor is gone (where no PDEATHSIG exists)."""
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - no event says "parent gone"
        await asyncio.sleep(PARENT_CHECK_S)
    log.error("supervisor %d is gone; stopping", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)  # the same graceful stop as a forwarded SIGTERM


async def _serve_worker(config: Config, parent_pid: int, **kwargs: Any) -> None:
    from fleetgate.app import serve

    watchdog = asyncio.create_task(_watch_parent(parent_pid), name="parent-watch")
    try:
        await serve(config, **kwargs)
    finally:
        watchdog.cancel()


def run_worker(
    config: Config, index: int, count: int, ready: Connection, parent_pid: int = 0
) -> None:
    """Entry point of one worker process (a spawned interpreter)."""
    from fleetgate.app import Server, StartupError, announce, run_loop
    from fleetgate.observability.logging import setup_logging

    # A SIGHUP forwarded before the event loop handles it must not end the worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging(config.log_level, config.json_log_enable)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))
    parent_pid = parent_pid or os.getppid()
    if not die_with_parent(parent_pid):
        log.error("supervisor %d exited before worker %d started; stopping", parent_pid, index)
        raise SystemExit(1)

    def started(server: Server) -> None:
        announce(server)
        ready.send(os.getpid())
        ready.close()

    try:
        run_loop(
            _serve_worker(
                worker_config(config, index), parent_pid, ready=started, workers=count
            )
        )
    except StartupError as exc:  # a taken port: its one line, no traceback
        log.error("%s", exc)
        raise SystemExit(1) from None
    except Exception:
        log.exception("worker %d failed", index)
        raise SystemExit(1) from None


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready: Connection | None  # the parent's end until the worker reports ready
    pid: int = 0


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, config: Config, count: int) -> None:
        check_config(config)
        self.config = config
        self.count = count
        import multiprocessing  # a one-process server (the default) never loads it

        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.metrics_dir = ""
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._restarts: deque[float] = deque()

    # -- life cycle ----------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or an unrecoverable worker failure (exit 1)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            self._prepare()
            code = self._start_all()
            if code == 0:
                code = self._watch()
            return self._stop_all(code)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._cleanup()

    def _prepare(self) -> None:
        """Once, before any worker: metrics directory, store schema, Tesla dev CA."""
        from fleetgate.observability.metrics import MULTIPROC_ENV

        self.metrics_dir = tempfile.mkdtemp(prefix="fleetgate-metrics-")
        # Inherited by the spawned workers, read by prometheus_client when they import it.
        os.environ[MULTIPROC_ENV] = self.metrics_dir
        config = self.config
        if config.store.enabled:
            # Creates every worker's file (schema, WAL) before any worker starts, so worker
            # 0 finds all of them to read.
            from fleetgate.store import RecordStore

            for index in range(self.count):
                RecordStore(shard_path(config.store_path, index)).close()
        if config.tesla_enabled and config.tls is None:
            # Without this every worker would generate its own development CA at once.
            from fleetgate.listeners.tesla.listener import DEV_CA_DIR
            from fleetgate.pki import init_pki

            init_pki(config.data_path / DEV_CA_DIR, host="localhost")
        log.info(
            "starting %d workers",
            self.count,
            extra=fields(pid=os.getpid(), metrics_dir=self.metrics_dir),
        )

    def _cleanup(self) -> None:
        from fleetgate.observability.metrics import MULTIPROC_ENV

        if os.environ.get(MULTIPROC_ENV) == self.metrics_dir:
            del os.environ[MULTIPROC_ENV]
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        for worker in self.workers:
            pid = worker.process.pid
            if pid is not None and worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)

    def _spawn(self, index: int) -> _Worker:
        parent_end, child_end = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=run_worker,
            args=(self.config, index, self.count, child_end, os.getpid()),
            name=f"fleetgate-worker-{index}",
        )
        process.start()
        child_end.close()
        return _Worker(index, process, parent_end)

    def _start_all(self) -> int:
        self.workers = [self._spawn(index) for index in range(self.count)]
        deadline = time.monotonic() + START_TIMEOUT_S
        while any(worker.ready is not None for worker in self.workers):
            if self._stopping:
                return 0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("workers not ready after %.0f s; stopping", START_TIMEOUT_S)
                return 1
            self._wait(remaining)
            for worker in self.workers:
                if worker.ready is not None and not self._take_ready(worker):
                    log.error(
                        "worker %d exited with code %s during start; stopping",
                        worker.index, worker.process.exitcode,
                    )
                    return 1
        log.info(
            "%d workers ready",
            self.count,
            extra=fields(pids=[worker.pid for worker in self.workers]),
        )
        return 0

    def _take_ready(self, worker: _Worker) -> bool:
        """Collect the worker's ready message if there is one; False if it has died."""
        channel = worker.ready
        assert channel is not None
        try:
            if not channel.poll():
                return worker.process.is_alive()
            worker.pid = int(channel.recv())
            alive = True
        except (EOFError, OSError):  # the worker ended before saying it was ready
            alive = False
            worker.process.join(5)
        channel.close()
        worker.ready = None
        return alive

    def _wait(self, timeout: float) -> None:
        objects: list[Any] = [self._wake_r]
        for worker in self.workers:
            objects.append(worker.process.sentinel)
            if worker.ready is not None:
                objects.append(worker.ready)
        import multiprocessing.connection

        multiprocessing.connection.wait(objects, timeout)

    def _watch(self) -> int:
        while not self._stopping:
            self._wait(5.0)
            if self._stopping:
                break
            for worker in self.workers:
                if worker.ready is not None:
                    self._take_ready(worker)
                if worker.process.is_alive() or worker.process.exitcode is None:
                    continue
                code = worker.process.exitcode
                log.error(
                    "worker %d exited unexpectedly with code %s",
                    worker.index,
                    code,
                    extra=fields(worker=worker.index, pid=worker.process.pid, exit_code=code),
                )
                self._forget_metrics(worker)
                if not self._may_restart():
                    log.error(
                        "more than %d worker restarts in %.0f s; stopping",
                        MAX_RESTARTS, RESTART_WINDOW_S,
                    )
                    return 1
                replacement = self._spawn(worker.index)
                log.warning(
                    "restarted worker %d",
                    worker.index,
                    extra=fields(worker=worker.index, pid=replacement.process.pid),
                )
                self.workers[worker.index] = replacement
        return 0

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            return False
        self._restarts.append(now)
        return True

    def _forget_metrics(self, worker: _Worker) -> None:
        """Drop a dead worker's live gauges (open connections, queue depths)."""
        pid = worker.process.pid
        if pid is None or not self.metrics_dir:
            return
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def _stop_all(self, code: int) -> int:
        """SIGTERM every worker, wait for each to drain, kill what does not stop in time."""
        log.info("stopping %d workers", len(self.workers))
        for worker in self.workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in %.0f s; killing it", worker.index,
                          STOP_TIMEOUT_S)
                worker.process.kill()
                worker.process.join(5)
                code = 1
            elif worker.process.exitcode not in _STOPPED_CODES and code == 0:
                log.error("worker %d exited with code %s while stopping", worker.index,
                          worker.process.exitcode)
                code = 1
            if worker.ready is not None:
                worker.ready.close()
        return code
