"""Builds the server from a :class:`~fleetgate.config.Config` and runs it.

Start order: sinks (and the store) first, then the API, then the device listeners, so
nothing is accepted before there is somewhere to put it. Stop order is the reverse:
listeners stop taking data, then the pipeline flushes what it holds, then the API goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from fleetgate import __version__
from fleetgate.config import AckLevel, Config, StatsdConfig
from fleetgate.forms import wire_payloads
from fleetgate.listeners.teltonika.command_center import command_center
from fleetgate.listeners.teltonika.commands import CommandCenter
from fleetgate.listeners.teltonika.tcp import create_listener as teltonika_tcp_listener
from fleetgate.listeners.teltonika.udp import create_listener as teltonika_udp_listener
from fleetgate.listeners.tesla.listener import create_listener as tesla_listener
from fleetgate.observability.dispatcher_metrics import dispatcher_metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.loop_lag import LoopLagProbe
from fleetgate.observability.process_metrics import keep_fresh
from fleetgate.observability.process_metrics import refresh as refresh_process_metrics
from fleetgate.observability.redact import redact_tree
from fleetgate.pipeline import AckPolicy, Ledger, Pipeline, Router, RunnerSettings, SinkRunner
from fleetgate.pipeline.deadletter import DeadLetters
from fleetgate.pipeline.hub import LiveHub
from fleetgate.pipeline.spool import Spool, SpoolInUseError, SpoolSettings
from fleetgate.runtime import Listener, ListenerFactory, ServerContext, StartupError
from fleetgate.settings import ConfigError
from fleetgate.sinks.base import Health, SinkContext
from fleetgate.sinks.registry import build_sink
from fleetgate.sinks.sqlite import SqliteSettings, SqliteSink
from fleetgate.store import RecordStore

if TYPE_CHECKING:
    from fleetgate.observability.profiler import ProfilerServer

log = logging.getLogger("fleetgate")

STORE_SINK = SqliteSink.name
DEAD_LETTER_DIR = "deadletter"
# Records a sink runner keeps in memory when the spool holds the rest.
SPOOLED_QUEUE_RECORDS = 20_000
# Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000
# How often the objects alive are moved out of the cyclic collector's sight (CollectorPacer).
GC_FREEZE_INTERVAL_S = 0.1
# Objects frozen beyond those of the last full collection (at least this many, at least as
# many again) after which the pacer runs a full one: cyclic garbage frozen before it died is
# only found then.
GC_FULL_AFTER_OBJECTS = 200_000

def mqtt_ingest_listener(context: ServerContext) -> Listener | None:
    """The CAN-gateway subscriber's factory, its MQTT client (paho) loaded only when used."""
    settings = context.config.mqtt_ingest
    if settings is None or not settings.enabled:
        return None
    from fleetgate.listeners.mqtt import create_listener

    return create_listener(context)


# Started in this order; each returns None when its config disables it.
LISTENER_FACTORIES: tuple[ListenerFactory, ...] = (
    teltonika_tcp_listener,
    teltonika_udp_listener,
    tesla_listener,
    mqtt_ingest_listener,
)

__all__ = ["Server", "StartupError", "build_pipeline", "serve"]


def runner_settings(config: Config) -> RunnerSettings:
    s = config.sink_settings
    return RunnerSettings(
        max_queue_records=s.max_queue_records,
        max_batch=s.max_batch,
        max_linger_s=s.max_linger_ms / 1000,
        retry_initial_s=s.retry_initial_ms / 1000,
        retry_max_s=s.retry_max_ms / 1000,
    )


def build_spool(config: Config, ledger: Ledger) -> Spool | None:
    """The durable spool (``None`` when disabled), checked and recovered from disk."""
    if not config.spool.enabled:
        return None
    s = config.spool
    spool = Spool(
        SpoolSettings(
            config.spool_path,
            segment_bytes=s.segment_bytes,
            max_bytes=s.max_bytes,
            fsync=s.fsync,
            memory_records=s.memory_records,
        ),
        ledger,
    )
    try:
        recovery = spool.open()
    except SpoolInUseError as exc:
        raise StartupError(str(exc)) from None
    if recovery.entries:
        log.info(
            "spool: %d frames in %d segments to deliver; resuming after offset %d",
            recovery.entries,
            recovery.segments,
            recovery.head,
            extra=fields(directory=str(config.spool_path), cut_bytes=recovery.cut_bytes),
        )
    return spool


def acks_wait_for_store(config: Config) -> bool:
    """Whether any device's ack waits for the embedded store's commit."""
    rules: list[AckLevel | list[str]] = [config.ack_level, *config.ack_policy.values()]
    return STORE_SINK in config.reliable_ack_sources.values() or any(
        rule is AckLevel.STORE if isinstance(rule, AckLevel) else STORE_SINK in rule
        for rule in rules
    )


def build_pipeline(config: Config, store: RecordStore | None = None) -> Pipeline:
    """Sinks named by ``records`` (plus the store) wired behind a router and ack policy."""
    context = SinkContext(
        namespace=config.namespace,
        transmit_decoded=config.transmit_decoded_records,
        data_dir=config.data_dir,
        node_id=config.node_id or socket.gethostname(),
    )
    always: list[str] = []
    runners: dict[str, SinkRunner] = {}
    settings = runner_settings(config)
    if config.spool.enabled:
        # With the spool a sink's queue in memory only needs to keep batches full; what
        # does not fit stays in the spool and is read back from there.
        settings = dataclasses.replace(
            settings, max_queue_records=min(settings.max_queue_records, SPOOLED_QUEUE_RECORDS)
        )
    if config.store.enabled:
        always.append(STORE_SINK)
        store_settings = dataclasses.replace(
            settings,
            max_batch=config.store.max_batch,
            max_queue_records=max(settings.max_queue_records, 2 * config.store.max_batch),
            fill_s=0.0 if acks_wait_for_store(config) else config.store.commit_interval_ms / 1000,
        )
        store_sink = SqliteSink(SqliteSettings(path=str(config.store_path)), context, store=store)
        # The store holds up new frames when it falls behind instead of spilling: the API
        # stays current, and the records it would read back cost more than they save.
        runners[STORE_SINK] = SinkRunner(store_sink, store_settings, spill=False)
    router = Router(config.records, always=always)
    for name in sorted(router.sink_names - set(runners)):
        sink = build_sink(name, config.sink_section(name), context)
        reliable = [t for t, s in config.reliable_ack_sources.items() if s == name]
        hooks = dispatcher_metrics(
            name,
            reliable,
            lambda batch: list(map(len, wire_payloads(batch, config.transmit_decoded_records))),
        )
        runners[name] = SinkRunner(sink, settings, hooks)
    policy = AckPolicy(
        config.ack_level,
        STORE_SINK if config.store.enabled else None,
        config.reliable_ack_sources,
        per_source=config.ack_policy,
    )
    ledger = Ledger(config.ack_timeout_s)
    return Pipeline(
        runners,
        router,
        policy,
        ack_timeout_s=config.ack_timeout_s,
        spool=build_spool(config, ledger),
        dead_letters=DeadLetters(config.data_path / DEAD_LETTER_DIR),
    )


class Server:
    """The running server: pipeline, listeners and API, started and stopped in order."""

    def __init__(self, config: Config, workers: int = 1) -> None:
        self.config = config
        # Worker processes sharing the device ports (reported by ``/health``).
        self.workers = workers
        # The process that serves the API reads every worker's store file.
        self.store: RecordStore | None = (
            RecordStore(config.store_path, read_shards=config.api.enabled)
            if config.store.enabled
            else None
        )
        self.pipeline = build_pipeline(config, self.store)
        # Live fan-out to /stream clients, fed with every batch entering the pipeline, or
        # (api.stream.source, scale-out) with every node's records from the shared log.
        self.hub = LiveHub()
        if config.api.enabled and config.api.stream.source is None:
            self.pipeline.add_observer(self.hub.publish)
        self.auth: Any = None
        self.api_app: Any = None  # the API's ASGI entry (fleetgate.api.lazy.LazyApi)
        # Teltonika commands: the API queues them, the TCP listener's sessions send them
        # (through Redis to the worker or node holding the device: command_routing).
        self.commands: CommandCenter | None = command_center(config)
        self.context = ServerContext(config, self.pipeline, self.store, self.commands)
        self.listeners: list[Listener] = []
        self.started_at = time.time()
        self._api_server: Any = None
        self._metrics_server: Any = None
        self._profiler: ProfilerServer | None = None
        self._statsd: Any = None
        self._process_metrics: asyncio.Task[None] | None = None
        self._api_task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    async def start(self) -> None:
        """Start everything; a port that cannot be bound raises :class:`StartupError`
        naming the listener and the address."""
        await self.pipeline.start()
        if self.commands is not None:
            await self.commands.start()
        if self.config.api.enabled:
            with bind_failure("api", self.config.api.host, self.config.api.port):
                await self._start_api()
        await self._start_monitoring()
        for factory in LISTENER_FACTORIES:
            listener = factory(self.context)
            if listener is None:
                continue
            host, port = listen_address(listener.name, self.config)
            with bind_failure(listener.name, host, port, self.config):
                await listener.start()
            self.listeners.append(listener)
        source = self.config.api.stream.source
        if self.config.api.enabled and source is not None:
            # The shared log's readers (and the Tesla decoding they need) only when used.
            from fleetgate.recordlog import ReadOptions, open_reader
            from fleetgate.recordlog.live import LiveFeed

            feed = LiveFeed(
                lambda: open_reader(self.config, source, ReadOptions()), self.hub.publish
            )
            await feed.start()
            self.listeners.append(feed)
        self.started.set()

    async def stop(self) -> None:
        # All listeners at once: each stops accepting at once, then drains its sessions
        # within its own deadline (one listener's drain does not keep another accepting).
        results = await asyncio.gather(
            *(listener.stop() for listener in reversed(self.listeners)), return_exceptions=True
        )
        for listener, result in zip(reversed(self.listeners), results, strict=True):
            if isinstance(result, Exception):
                log.error("stopping %s failed", listener.name, exc_info=result)
        self.listeners.clear()
        if self.commands is not None:
            await self.commands.stop()
        await self.pipeline.close()
        if self._api_server is not None:
            self._api_server.should_exit = True
            if self._api_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._api_task
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        for part in (self._profiler, self._statsd):
            if part is not None:
                await part.stop()
        self._profiler = self._statsd = None
        if self._process_metrics is not None:
            self._process_metrics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._process_metrics
            self._process_metrics = None
        if self.store is not None:
            self.store.close()

    def reload(self) -> None:
        """SIGHUP: listeners holding certificates read them again (new handshakes use
        them; connected devices keep their sessions)."""
        for listener in self.listeners:
            reload = getattr(listener, "reload", None)
            if callable(reload):
                reload()

    async def _start_monitoring(self) -> None:
        """Tesla's ``monitoring``: the process gauges, ``/metrics`` on its own port (so a
        Prometheus that scraped the reference server keeps scraping the same address), or
        StatsD instead, and the profiling endpoints."""
        refresh_process_metrics(self.started_at)
        self._process_metrics = asyncio.create_task(
            keep_fresh(self.started_at), name="process-metrics"
        )
        monitoring = self.config.monitoring
        if monitoring is None:
            return
        if monitoring.profiler_port > 0:
            from fleetgate.observability.profiler import ProfilerServer  # cProfile, when used

            self._profiler = ProfilerServer(
                monitoring.profiler_host, monitoring.profiler_port, monitoring.profiling_path
            )
            with bind_failure("profiler", monitoring.profiler_host, monitoring.profiler_port):
                await self._profiler.start()
        elif monitoring.profiling_path:
            log.warning("monitoring.profiling_path is used only with profiler_port; ignored")
        statsd = monitoring.statsd
        if statsd is not None and statsd.host:
            if monitoring.prometheus_metrics_port > 0:
                log.warning(
                    "monitoring.statsd ignored: prometheus_metrics_port is set (as in the "
                    "reference, Prometheus wins)"
                )
            else:
                await self._start_statsd(statsd)
        if monitoring.prometheus_metrics_port <= 0:
            return
        from prometheus_client import start_http_server

        from fleetgate.observability.metrics import exposition_registry

        with bind_failure(
            "prometheus metrics",
            monitoring.prometheus_metrics_host,
            monitoring.prometheus_metrics_port,
        ):
            server, _thread = start_http_server(
                monitoring.prometheus_metrics_port,
                addr=monitoring.prometheus_metrics_host,
                registry=exposition_registry(),
            )
        self._metrics_server = server
        log.info(
            "prometheus metrics on http://%s:%d/metrics",
            monitoring.prometheus_metrics_host,
            monitoring.prometheus_metrics_port,
        )

    async def _start_statsd(self, statsd: StatsdConfig) -> None:
        from fleetgate.observability.metrics import REGISTRY
        from fleetgate.observability.statsd import StatsdExporter

        if statsd.sample_rate not in (None, 100, 100.0):
            log.warning(
                "monitoring.statsd.sample_rate ignored: counts are sent summed per flush "
                "period, which needs no sampling"
            )
        self._statsd = StatsdExporter(
            statsd.host, statsd.prefix, statsd.flush_period / 1000, REGISTRY
        )
        await self._statsd.start()

    @property
    def metrics_port(self) -> int:
        """Port of the separate Prometheus listener (0 when not configured)."""
        if self._metrics_server is None:
            return 0
        return int(self._metrics_server.server_address[1])

    def listener(self, name: str) -> Listener | None:
        return next((item for item in self.listeners if item.name == name), None)

    def health_report(self) -> dict[str, Any]:
        """``/health``: the worst status of any sink or listener, and each one's state."""
        # Unauthenticated: error texts lose any credentials a backend's message quoted.
        sinks = redact_tree(self.pipeline.health())
        listeners = redact_tree({item.name: item.health() for item in self.listeners})
        statuses = {entry["status"] for entry in sinks.values()}
        statuses.update(entry.get("status", "ok") for entry in listeners.values())
        if Health.DOWN.value in statuses:
            status = Health.DOWN.value
        elif Health.DEGRADED.value in statuses:
            status = Health.DEGRADED.value
        else:
            status = Health.OK.value
        return {
            "status": status,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "workers": self.workers,
            "listeners": listeners,
            "sinks": sinks,
        }

    async def _start_api(self) -> None:
        from fleetgate.api.auth import Authenticator
        from fleetgate.api.lazy import HEALTH_PATH, METRICS_PATH, LazyApi
        from fleetgate.api.uvicorn_core import uvicorn_classes

        uvicorn_config, uvicorn_server = uvicorn_classes()

        settings = self.config.api
        self.auth = auth = Authenticator(settings.auth, self.config.data_path)

        def build() -> Any:
            from fleetgate.api.app import create_api

            return create_api(
                self.store,
                self.health_report,
                auth=auth,
                settings=settings,
                hub=self.hub,
                commands=self.commands,
            )

        # Health checks and scrapes are answered at once; FastAPI and the routes are loaded
        # with the first other request (dashboard, REST, /stream).
        public = set(settings.auth.public_paths)
        if not settings.auth.enabled:
            public |= {HEALTH_PATH, METRICS_PATH}
        self.api_app = LazyApi(build, self.health_report, public)
        config = uvicorn_config(
            self.api_app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
            ws_ping_interval=settings.stream.ping_interval_s,
            ws_ping_timeout=settings.stream.ping_timeout_s,
            ws_per_message_deflate=settings.stream.compression,
            # A /stream client that reads nothing must not hold shutdown forever.
            timeout_graceful_shutdown=5,
        )
        server = uvicorn_server(config)
        # The process's own SIGINT/SIGTERM handling (in ``serve``) owns shutdown.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        # Bound here, not by uvicorn: a taken port is then our one-line error (uvicorn logs
        # its own and exits 3).
        sock = bind_tcp(settings.host, settings.port)
        self._api_server = server
        self._api_task = asyncio.create_task(server.serve(sockets=[sock]), name="api")
        while not server.started:
            if self._api_task.done():
                self._api_task.result()
                raise RuntimeError("API server failed to start")
            await asyncio.sleep(0.01)

    @property
    def api_port(self) -> int:
        """The bound API port (useful when configured as 0)."""
        if self._api_server is None:
            return 0
        for server in self._api_server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0


async def serve(
    config: Config, ready: Callable[[Server], None] | None = None, workers: int = 1
) -> None:
    """Run until SIGINT/SIGTERM."""
    server = Server(config, workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
    except (OSError, StartupError, ConfigError) as exc:
        await server.stop()
        if not isinstance(exc, OSError):
            raise
        raise StartupError(f"cannot start: {exc.strerror or exc}") from exc
    settle_garbage_collector()
    pacer = CollectorPacer()
    pacer.start()
    lag_probe = LoopLagProbe()
    lag_probe.start()
    if ready is not None:
        ready(server)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        pacer.stop()
        lag_probe.stop()
        await server.stop()


def listen_address(name: str, config: Config) -> tuple[str, int]:
    """Where a device listener is configured to listen (for its bind-failure line)."""
    if name == "teltonika":
        return config.teltonika.host, config.teltonika.port
    if name == "teltonika-udp":
        return config.teltonika.host, config.teltonika.udp_listen_port
    if name == "tesla":
        return config.host or "0.0.0.0", config.port
    return "", 0


_BOUND_ADDRESS = re.compile(r"(?:bind on address|local_addr) \('([^']*)', (\d+)")


@contextlib.contextmanager
def bind_failure(
    name: str, host: str, port: int, config: Config | None = None
) -> Iterator[None]:
    """Turn an ``OSError`` of binding ``name`` into one :class:`StartupError` line naming
    the listener and its address (``tesla: cannot listen on 0.0.0.0:4443: address already
    in use``). The address in asyncio's message wins: a listener that binds two ports (the
    Tesla vehicle and status ports) is named by the one that failed."""
    try:
        yield
    except OSError as exc:
        text = exc.strerror or str(exc)
        # uvloop wraps the errno in a cause ("could not bind to local_addr ...").
        errno = exc.errno or getattr(exc.__cause__, "errno", None)
        reason = (os.strerror(errno) if errno else text).lower()
        found = _BOUND_ADDRESS.search(text)
        if found:
            host, port = found[1], int(found[2])
        if config is not None and name == "tesla" and port == config.status_port:
            name = "tesla status"
        shown = f"[{host}]" if ":" in host else host or "0.0.0.0"
        raise StartupError(f"{name}: cannot listen on {shown}:{port}: {reason}") from exc


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (the first address ``host`` resolves to)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def settle_garbage_collector() -> None:
    """Move what start-up allocated (modules, tables, the config) out of the collector's
    sight and let it run less often: records are short-lived and acyclic, and collections
    of the young generation cost a quarter of the CPU on the ingest path otherwise."""
    gc.collect()
    gc.freeze()
    _threshold0, threshold1, threshold2 = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, threshold1, threshold2)


class CollectorPacer:
    """Keeps the cyclic garbage collector off the records in flight.

    Records live a second or two (the spool keeps the newest in memory, the store's queue
    the next batch), so a young-generation collection found tens of thousands of them
    alive: one every few seconds at 17k records/s, each holding the GIL for 15-80 ms
    (measured with gc.callbacks), long enough to delay every ack due meanwhile. Moving
    what is alive into the permanent generation (``gc.freeze``, a list splice) every
    ``interval_s`` leaves a collection only what was allocated since. Acyclic objects
    (records, frames) are freed by their reference count as before, frozen or not; cyclic
    garbage that was frozen while still in use is found by a full collection, run when
    the frozen objects outgrow those the previous full collection left by
    ``max(full_after, that count)``: garbage is bounded, and a steady working set never
    triggers one.
    """

    def __init__(
        self, interval_s: float = GC_FREEZE_INTERVAL_S, full_after: int = GC_FULL_AFTER_OBJECTS
    ) -> None:
        self.interval_s = interval_s
        self.full_after = full_after
        self.full_collections = 0
        self.counts = 0  # walks of the frozen objects (gc.get_freeze_count)
        self._baseline = gc.get_freeze_count()
        self._mark_frozen = self._baseline
        self._mark_blocks = sys.getallocatedblocks()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self.tick()
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def tick(self) -> None:
        """Freeze what is alive; a full collection when the frozen objects grew too much.

        Counting the frozen objects walks every one of them (26 ms for ~110k on a busy
        machine, every tick, on the loop): they are counted only once the heap's blocks
        (``sys.getallocatedblocks``, a walk of its pools) grew by the room left under the
        bound since the last count. A frozen object holds at least one block, so the frozen
        objects cannot have passed the bound before that, unless other blocks were freed
        meanwhile: then the count waits for the heap to grow back, and what is frozen stays
        bounded by the bound plus the heap's other blocks.
        """
        gc.freeze()
        baseline = self._baseline
        bound = baseline + max(baseline, self.full_after)
        blocks = sys.getallocatedblocks()
        if blocks - self._mark_blocks < bound - self._mark_frozen:
            return
        frozen = self._count(blocks)
        if frozen > bound:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._baseline = self._count(sys.getallocatedblocks())
            self.full_collections += 1

    def _count(self, blocks: int) -> int:
        """The frozen objects now (a walk of them); the marks the next tick compares to."""
        frozen = gc.get_freeze_count()
        self.counts += 1
        self._mark_frozen, self._mark_blocks = frozen, blocks
        return frozen


def announce(server: Server) -> None:
    """Log where each listener and the API are ready."""
    config = server.config
    for listener in server.listeners:
        log.info("%s ready: %s", listener.name, listener.health().get("address", ""))
    if config.api.enabled:
        log.info("api ready: %s (dashboard at /, docs at /docs)", api_url(server))
        sign_in_link(server)


def api_url(server: Server) -> str:
    """Where the API answers (a wildcard bind address shown as loopback)."""
    api = server.config.api
    host = "127.0.0.1" if api.host in ("", "0.0.0.0", "::") else api.host
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if api.tls_cert else "http"
    return f"{scheme}://{host}:{server.api_port}"


def sign_in_link(server: Server) -> None:
    """On the embedded defaults (the generated secret), log a ready dashboard link."""
    from fleetgate.api.auth import Authenticator

    auth = server.auth
    settings = server.config.api.auth
    if not isinstance(auth, Authenticator) or not auth.enabled:
        if not settings.enabled:
            log.warning("api: authentication is disabled; anyone who reaches the port can read")
        return
    if not (auth.key_in_data_dir and settings.sign_in_link):
        return
    token = auth.issue("dashboard", settings.sign_in_link_ttl_s, ("read", "stream"))
    # In the fragment: browsers never send it to the server (no access logs, no Referer).
    log.info(
        "dashboard sign-in link (valid %g h): %s/#token=%s",
        settings.sign_in_link_ttl_s / 3600, api_url(server), token,
    )


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when available (the fast path), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
        return
    uvloop.run(main)
