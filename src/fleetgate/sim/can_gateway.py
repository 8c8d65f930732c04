"""Simulated CAN gateways: the ESP32 publisher, in software, for building without hardware.

Each gateway owns a :class:`~fleetgate.sim.can_vehicle.VehicleModel` and publishes its
signals to ``<root>/<gateway-id>/<group>/<signal>`` with the core's encoders
(:func:`~fleetgate.protocols.mqtt.format_payload`: value, ts, unit, seq, and an HMAC when
a key is given), at the QoS the signal table gives (QoS 0 telemetry, QoS 1 events):

* **snapshot** mode (the gateway's default): the whole tree every
  ``publish_interval_seconds``;
* **real-time** mode: each signal at its own rate (rpm every 100 ms, coolant every second,
  ...), event signals (gear, DTCs, error count) the moment they change.

Connection: mutual TLS when a certificate is given, a will message
(``gateway/connection_state`` = ``disconnected``, QoS 1) for unclean drops, ``connected``
on every connect, reconnects with backoff. While the broker is unreachable messages wait
in a bounded :class:`OfflineQueue` and are flushed, in order, on reconnect; a QoS 1
message leaves the queue only once the broker acknowledged it.

The gateway's config file (what the ESP32 publisher reads) is accepted as is::

    {"endpoint": "broker.example.com:8883", "thing_name": "gw-001", "client_id": "gw-001",
     "cert_path": "certs/gw-001.crt", "key_path": "certs/gw-001.key",
     "ca_path": "certs/ca.crt", "publish_interval_seconds": 300}

``endpoint`` is ``host`` (port 8883), ``host:port`` or a URL; relative paths are relative
to the config file; TLS is used when certificates are given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fleetgate.mqtt_client import ConnectError, PahoDriver, new_client
from fleetgate.mqtt_settings import BrokerAddress, MqttIngestConfig
from fleetgate.protocols.mqtt import (
    DEFAULT_ROOT,
    SIGNALS,
    Signal,
    format_bare,
    format_payload,
    signal_for,
    signal_topic,
    valid_gateway_id,
)
from fleetgate.sim.can_vehicle import VehicleModel

log = logging.getLogger("fleetgate.sim.can_gateway")

DEFAULT_INTERVAL_S: Final = 300.0
REALTIME_TICK_S: Final = 0.1
PUBLISH_TIMEOUT_S: Final = 10.0
STOP_FLUSH_TIMEOUT_S: Final = 5.0


class GatewayConfigError(ValueError):
    """The gateway config file or flags do not describe a usable gateway."""


# -- settings ----------------------------------------------------------------------------------
@dataclass(slots=True)
class CanGatewaySettings:
    """One simulator run: which broker, which gateways, how to publish."""

    broker: str = "mqtt://127.0.0.1:1883"
    gateway_id: str = "can-gateway"
    client_id: str | None = None  # default: the gateway id
    gateways: int = 1
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    hmac_key: bytes | None = None
    interval_s: float = DEFAULT_INTERVAL_S
    realtime: bool = False
    bare: bool = False  # bare values instead of JSON objects (no ts/seq/HMAC)
    queue_size: int = 10_000
    topic_root: str = DEFAULT_ROOT
    duration_s: float | None = None
    snapshots: int | None = None  # stop after this many snapshots (snapshot mode)
    seed: int | None = None
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    keepalive_s: int = 30
    config_file: str | None = None  # where the settings came from (for GET /config)

    @property
    def address(self) -> BrokerAddress:
        return MqttIngestConfig.parse_url(self.broker)

    def gateway_ids(self) -> list[str]:
        if self.gateways <= 1:
            return [self.gateway_id]
        return [f"{self.gateway_id}-{n:03d}" for n in range(1, self.gateways + 1)]

    def client_ids(self) -> list[str]:
        base = self.client_id or self.gateway_id
        if self.gateways <= 1:
            return [base]
        return [f"{base}-{n:03d}" for n in range(1, self.gateways + 1)]

    def check(self) -> None:
        try:
            address = self.address
        except ValueError as exc:
            raise GatewayConfigError(str(exc)) from None
        for gateway_id in self.gateway_ids():
            if not valid_gateway_id(gateway_id):
                raise GatewayConfigError(f"{gateway_id!r} is not a valid gateway id")
        if bool(self.cert) != bool(self.key):
            raise GatewayConfigError("--cert and --key go together")
        if (self.cert or self.ca) and not address.tls:
            raise GatewayConfigError("certificates given but the broker URL is mqtt://")
        if self.interval_s <= 0 or self.queue_size < 1 or self.gateways < 1:
            raise GatewayConfigError("interval, queue size and gateways must be positive")

    def summary(self) -> dict[str, Any]:
        """What ``GET /config`` shows: everything but key material."""
        return {
            "endpoint": str(self.address),
            "thing_name": self.gateway_id,
            "client_id": self.client_id or self.gateway_id,
            "gateways": self.gateway_ids(),
            "cert_path": self.cert,
            "key_path": self.key,
            "ca_path": self.ca,
            "publish_interval_seconds": self.interval_s,
            "mode": "realtime" if self.realtime else "snapshot",
            "payload": "bare" if self.bare else "json",
            "hmac": self.hmac_key is not None,
            "topic_root": self.topic_root,
            "queue_size": self.queue_size,
            "config_file": self.config_file,
        }


def endpoint_url(endpoint: str, tls: bool) -> str:
    """The gateway config's ``endpoint`` (host, host:port or URL) as a broker URL."""
    if "://" in endpoint:
        return endpoint
    scheme = "mqtts" if tls else "mqtt"
    _, sep, port = endpoint.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return f"{scheme}://{endpoint}"
    return f"{scheme}://{endpoint}:{8883 if tls else 1883}"


def settings_from_config_file(path: str | Path, **overrides: Any) -> CanGatewaySettings:
    """Settings from the gateway's ``config.json``, then ``overrides`` (flags given)."""
    file = Path(path)
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise GatewayConfigError(f"{file}: {exc}") from None
    if not isinstance(raw, dict) or "endpoint" not in raw:
        raise GatewayConfigError(f"{file}: expected an object with at least endpoint")

    def local(name: str) -> str | None:
        value = raw.get(name)
        if not value:
            return None
        candidate = Path(str(value))
        return str(candidate if candidate.is_absolute() else file.parent / candidate)

    cert, key, ca = local("cert_path"), local("key_path"), local("ca_path")
    thing = str(raw.get("thing_name") or raw.get("client_id") or "can-gateway")
    settings = CanGatewaySettings(
        broker=endpoint_url(str(raw["endpoint"]), tls=bool(cert or ca)),
        gateway_id=thing,
        client_id=str(raw.get("client_id") or thing),
        cert=cert,
        key=key,
        ca=ca,
        interval_s=float(raw.get("publish_interval_seconds") or DEFAULT_INTERVAL_S),
        config_file=str(file),
    )
    for name, value in overrides.items():
        if value is not None:
            setattr(settings, name, value)
    return settings


# -- the offline queue -------------------------------------------------------------------------
@dataclass(slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    order: int


class OfflineQueue:
    """Messages waiting for the broker, bounded: oldest QoS 0 dropped first, QoS 1 kept.

    When full, a new message pushes out the oldest QoS 0 message; if only QoS 1 messages
    are left, a new QoS 0 message is dropped itself. QoS 1 messages are dropped (oldest
    first, counted and logged) only when ``capacity`` of them are waiting. Messages come
    out in the order they were put in.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._qos0: deque[Outgoing] = deque()
        self._qos1: deque[Outgoing] = deque()
        self._order = 0
        self.dropped_qos0 = 0
        self.dropped_qos1 = 0

    def __len__(self) -> int:
        return len(self._qos0) + len(self._qos1)

    def put(self, topic: str, payload: bytes, qos: int) -> None:
        self._order += 1
        message = Outgoing(topic, payload, qos, self._order)
        if len(self) >= self.capacity:
            if self._qos0:
                self._qos0.popleft()
                self.dropped_qos0 += 1
            elif qos == 0:
                self.dropped_qos0 += 1
                return
            elif len(self._qos1) >= self.capacity:
                self._qos1.popleft()
                self.dropped_qos1 += 1
                log.warning("offline queue full of QoS 1 messages; dropped the oldest")
        (self._qos1 if qos else self._qos0).append(message)

    def peek(self) -> Outgoing | None:
        """The oldest waiting message."""
        if self._qos0 and self._qos1:
            return self._qos0[0] if self._qos0[0].order < self._qos1[0].order else self._qos1[0]
        if self._qos0:
            return self._qos0[0]
        return self._qos1[0] if self._qos1 else None

    def remove(self, message: Outgoing) -> None:
        """Take ``message`` out once sent (it may have been dropped meanwhile)."""
        queue = self._qos1 if message.qos else self._qos0
        if queue and queue[0] is message:
            queue.popleft()


# -- one gateway -------------------------------------------------------------------------------
@dataclass
class GatewayStats:
    published_qos0: int = 0
    published_qos1: int = 0
    connects: int = 0
    last_error: str | None = None


@dataclass
class SimulatedGateway:
    """One gateway: its vehicle, its queue, its broker connection."""

    gateway_id: str
    client_id: str
    settings: CanGatewaySettings
    model: VehicleModel
    queue: OfflineQueue
    stats: GatewayStats = field(default_factory=GatewayStats)
    connected: bool = False
    seq: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _driver: PahoDriver | None = None
    _rate_window: deque[float] = field(default_factory=deque)

    def topic(self, signal: Signal) -> str:
        return signal_topic(self.gateway_id, signal.group, signal.name, self.settings.topic_root)

    def enqueue(self, signal: Signal, value: Any | None = None) -> None:
        """Queue ``signal`` (its model value unless ``value``) for publishing now."""
        if value is None:
            value = self.model.value(signal)
        topic = self.topic(signal)
        if self.settings.bare:
            payload = format_bare(value)
        else:
            self.seq += 1
            payload = format_payload(
                value,
                topic=topic,
                ts=time.time_ns() // 1_000_000,
                unit=signal.unit,
                seq=self.seq,
                key=self.settings.hmac_key,
            )
        self.queue.put(topic, payload, signal.qos)
        self._wakeup.set()

    def enqueue_snapshot(self) -> None:
        for signal in SIGNALS:
            self.enqueue(signal)

    # -- connection loop ---------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.address.tls:
            return None
        context = ssl.create_default_context(cafile=settings.ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.cert:
            context.load_cert_chain(settings.cert, settings.key)
        return context

    async def run(self, stopping: asyncio.Event) -> None:
        """Connect, flush the queue, reconnect after losses, until ``stopping`` is set."""
        settings = self.settings
        address = settings.address
        tls = self._tls_context()
        state = signal_for("gateway", "connection_state")
        assert state is not None
        delay = settings.reconnect_min_s
        while not stopping.is_set():
            # A fresh client per connection: paho would otherwise resend its own copy of
            # unacknowledged messages, and the queue here already does.
            client = new_client(
                self.client_id,
                mqtt5=False,
                connect_timeout_s=settings.connect_timeout_s,
                clean_session=True,
            )
            if tls is not None:
                client.tls_set_context(tls)
            will = (
                format_bare("disconnected")
                if settings.bare
                else format_payload("disconnected", topic=self.topic(state))
            )
            client.will_set(self.topic(state), will, qos=1)
            driver = self._driver = PahoDriver(client, lambda message: None)
            try:
                await driver.connect(
                    address.host,
                    address.port,
                    keepalive=settings.keepalive_s,
                    timeout_s=settings.connect_timeout_s,
                    clean_start=True,
                )
            except ConnectError as exc:
                driver.close()
                self._failed(str(exc))
            else:
                self.connected = True
                self.stats.connects += 1
                self.stats.last_error = None
                delay = settings.reconnect_min_s
                self.enqueue(state, "connected")
                await self._flush(driver, stopping)
                self.connected = False
                if not driver.lost.done():
                    await self._goodbye(driver, state)
                    return
                self._failed(f"connection lost: {driver.lost.result()}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(random.uniform(delay / 2, delay)):
                    await stopping.wait()
            delay = min(delay * 2, settings.reconnect_max_s)

    def _failed(self, error: str) -> None:
        if error != self.stats.last_error:
            log.warning(
                "gateway %s: broker unreachable (%s); %d messages queued",
                self.gateway_id,
                error,
                len(self.queue),
            )
        self.stats.last_error = error

    async def _flush(self, driver: PahoDriver, stopping: asyncio.Event) -> None:
        """Publish queued messages in order until stopping (queue empty) or the link drops."""
        while not driver.lost.done():
            message = self.queue.peek()
            if message is None:
                if stopping.is_set():
                    return
                self._wakeup.clear()
                waiters: list[asyncio.Future[Any]] = [
                    asyncio.ensure_future(asyncio.shield(driver.lost)),
                    asyncio.ensure_future(self._wakeup.wait()),
                    asyncio.ensure_future(stopping.wait()),
                ]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                continue
            try:
                await driver.publish(message.topic, message.payload, message.qos, PUBLISH_TIMEOUT_S)
            except ConnectError:
                if not driver.lost.done():
                    driver.close()
                return
            self.queue.remove(message)
            if message.qos:
                self.stats.published_qos1 += 1
            else:
                self.stats.published_qos0 += 1
            now = time.monotonic()
            self._rate_window.append(now)
            while self._rate_window and now - self._rate_window[0] > 10:
                self._rate_window.popleft()
            self.model.message_rate = len(self._rate_window) / 10

    async def _goodbye(self, driver: PahoDriver, state: Signal) -> None:
        with contextlib.suppress(ConnectError):
            payload = (
                format_bare("disconnected")
                if self.settings.bare
                else format_payload(
                    "disconnected", topic=self.topic(state), ts=time.time_ns() // 1_000_000
                )
            )
            await driver.publish(self.topic(state), payload, 1, PUBLISH_TIMEOUT_S)
        await driver.disconnect(2.0)

    def health(self) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "client_id": self.client_id,
            "connected": self.connected,
            "queued": len(self.queue),
            "published_qos0": self.stats.published_qos0,
            "published_qos1": self.stats.published_qos1,
            "dropped_qos0": self.queue.dropped_qos0,
            "dropped_qos1": self.queue.dropped_qos1,
            "connects": self.stats.connects,
            "last_error": self.stats.last_error,
        }


# -- the whole run -----------------------------------------------------------------------------
class CanGatewaySimulator:
    """N gateways publishing on a schedule; ``publish()`` is what ``POST /publish`` calls."""

    def __init__(self, settings: CanGatewaySettings) -> None:
        settings.check()
        self.settings = settings
        rng = random.Random(settings.seed)
        self.gateways = [
            SimulatedGateway(
                gateway_id,
                client_id,
                settings,
                VehicleModel(random.Random(rng.random())),
                OfflineQueue(settings.queue_size),
            )
            for gateway_id, client_id in zip(
                settings.gateway_ids(), settings.client_ids(), strict=True
            )
        ]
        self.snapshots = 0
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def gateway(self, gateway_id: str | None) -> list[SimulatedGateway]:
        if gateway_id is None:
            return list(self.gateways)
        return [gateway for gateway in self.gateways if gateway.gateway_id == gateway_id]

    def publish(
        self, values: Mapping[str, Any], gateway_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Publish ``values`` now (``{"engine_rpm": 2000}``; empty: a full snapshot).

        Keys are ``<group>_<signal>``; values are checked against the signal table
        (:class:`~fleetgate.protocols.mqtt.SignalValueError` for a bad one, KeyError for
        an unknown key). Returns what was queued, per gateway and topic.
        """
        targets = self.gateway(gateway_id)
        if not targets:
            raise KeyError(f"no gateway {gateway_id!r}")
        chosen: list[tuple[Signal, Any]] = []
        for name, value in values.items():
            signal = SIGNALS_BY_FIELD.get(name)
            if signal is None:
                raise KeyError(name)
            chosen.append((signal, signal.coerce(value)))
        if not chosen:
            chosen = [(signal, None) for signal in SIGNALS]
        queued = []
        for gateway in targets:
            for signal, value in chosen:
                gateway.enqueue(signal, value)
                queued.append(
                    {
                        "gateway_id": gateway.gateway_id,
                        "topic": gateway.topic(signal),
                        "qos": signal.qos,
                        "value": value if value is not None else gateway.model.value(signal),
                        "connected": gateway.connected,
                    }
                )
        return queued

    async def start(self) -> None:
        for gateway in self.gateways:
            self._tasks.append(
                asyncio.create_task(gateway.run(self.stopping), name=f"gw:{gateway.gateway_id}")
            )

    async def run_schedule(self) -> None:
        """Publish until the duration or snapshot count is reached (or forever)."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        started = loop.time()

        def over() -> bool:
            if settings.duration_s is not None and loop.time() - started >= settings.duration_s:
                return True
            return settings.snapshots is not None and self.snapshots >= settings.snapshots

        if settings.realtime:
            await self._realtime(over)
        else:
            await self._snapshots(over)

    async def _snapshots(self, over: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not over():
            now = loop.time()
            for gateway in self.gateways:
                gateway.model.advance(now - last)
                gateway.enqueue_snapshot()
            last = now
            self.snapshots += 1
            if over():
                return
            await self._sleep_until(now + self.settings.interval_s, over)

    async def _realtime(self, over: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        periodic = [signal for signal in SIGNALS if signal.period_s is not None]
        due = {signal.key: 0.0 for signal in periodic}
        for gateway in self.gateways:
            gateway.enqueue_snapshot()  # start from a complete picture
        last = loop.time()
        while not over():
            await self._sleep_until(last + REALTIME_TICK_S, over)
            now = loop.time()
            elapsed, last = now - last, now
            fire = []
            for signal in periodic:
                due[signal.key] += elapsed
                assert signal.period_s is not None
                if due[signal.key] >= signal.period_s - 1e-6:
                    due[signal.key] = 0.0
                    fire.append(signal)
            for gateway in self.gateways:
                changed = gateway.model.advance(elapsed)
                for key in sorted(changed):
                    group, name = key.split("/")
                    event = signal_for(group, name)
                    if event is not None and event not in fire:
                        gateway.enqueue(event)
                for signal in fire:
                    gateway.enqueue(signal)

    async def _sleep_until(self, deadline: float, over: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        while not over() and not self.stopping.is_set():
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.5)):
                    await self.stopping.wait()

    async def stop(self, flush_timeout_s: float = STOP_FLUSH_TIMEOUT_S) -> None:
        """Give queued messages up to ``flush_timeout_s`` to go out (connecting first if
        need be), then say goodbye and disconnect."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_timeout_s):
                while any(len(g.queue) for g in self.gateways):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        self.stopping.set()
        for gateway in self.gateways:
            gateway._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def health(self) -> dict[str, Any]:
        gateways = [gateway.health() for gateway in self.gateways]
        return {
            "status": "ok" if all(g["connected"] for g in gateways) else "degraded",
            "broker": str(self.settings.address),
            "gateways": gateways,
            "config": self.settings.summary(),
        }

    def totals(self) -> dict[str, int]:
        keys = ("published_qos0", "published_qos1", "dropped_qos0", "dropped_qos1", "queued")
        return {key: sum(g.health()[key] for g in self.gateways) for key in keys}


# Keys of POST /publish: "<group>_<signal>" (engine_rpm, vehicle_speed, diagnostics_dtc, ...).
SIGNALS_BY_FIELD: Final[Mapping[str, Signal]] = {
    f"{signal.group}_{signal.name}": signal for signal in SIGNALS
}
FIELD_NAMES: Final[Sequence[str]] = tuple(SIGNALS_BY_FIELD)
