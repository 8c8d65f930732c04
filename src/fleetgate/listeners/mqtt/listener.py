"""The CAN-gateway subscriber: broker messages in, records out, PUBACK only when safe.

One persistent MQTT session (``clean_start``/``clean_session`` false, MQTT 5 session
expiry), so QoS 1 messages published while fleetgate is down wait on the broker and arrive
when it comes back. Messages are decoded on arrival by the sans-I/O core
(:class:`~fleetgate.protocols.mqtt.GatewayDecoder`) and collected into batches; one worker
hands each batch to the pipeline in arrival order:

* a batch holding QoS 1 messages goes through ``pipeline.accept()``; its PUBACKs are sent,
  in arrival order, only when that returned True (the ack promise). If it returns False
  the subscriber withholds them and reconnects, so the broker redelivers them;
* a batch of QoS 0 messages only is ``submit()``-ted (nothing to acknowledge).

Refused messages (unknown topic, bad payload, HMAC, drift) are dropped with a metric and
a rate-limited log line, and still acknowledged: redelivering them would not make them
better. A PUBACK is never sent on a newer connection than the message came on (packet
ids are reused per connection). After a reconnect the broker redelivers what was not
acknowledged, so a record may arrive twice (at least once, never lost).

Backpressure: more than ``max_pending`` messages waiting for the pipeline stops reading
the socket until half have gone; the broker holds the rest (QoS 1) or applies its own
policy (QoS 0). The broker keeps at most ``receive_maximum`` unacknowledged QoS 1
messages in flight to us (MQTT 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetgate.listeners.mqtt.refusals import RefusalTracker
from fleetgate.mqtt_client import ConnectError, PahoDriver, new_client
from fleetgate.mqtt_settings import MqttIngestConfig
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.protocols.mqtt import GatewayDecoder, Refusal, RefusalReason
from fleetgate.records import Record, format_rfc3339_ms, now_ms

log = logging.getLogger("fleetgate.mqtt_ingest")

PROTOCOL = "mqtt"
# A connection that lasted this long resets the reconnect backoff.
STABLE_CONNECTION_S = 10.0
DISCONNECT_TIMEOUT_S = 2.0


class IngestPipeline(Protocol):
    """What the subscriber needs from the pipeline."""

    async def accept(self, records: Sequence[Record]) -> bool: ...

    async def submit(self, records: Sequence[Record]) -> Any: ...


@dataclass(slots=True)
class Batch:
    """Messages received on one connection, handed to the pipeline together."""

    generation: int
    records: list[Record] = field(default_factory=list)
    # Packet ids of the QoS 1 messages, in arrival order (refused ones too).
    mids: list[int] = field(default_factory=list)
    messages: int = 0
    qos0: int = 0


class MqttIngestListener:
    """Subscribes to the gateway broker and feeds the pipeline."""

    name = "mqtt_ingest"

    def __init__(
        self, settings: MqttIngestConfig, pipeline: IngestPipeline
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.broker = settings.broker
        # Each worker process has a client id of its own (the supervisor appends -wN).
        self.client_id = settings.client_id
        self.decoder = GatewayDecoder(
            root=settings.topic_root,
            hmac_keys=settings.key_map(),
            max_drift_ms=None if settings.max_drift_s is None else int(settings.max_drift_s * 1000),
        )
        self.refusals = RefusalTracker(settings.refusal_log_interval_s)
        self.state = "stopped"
        self.session_present: bool | None = None
        self.connected_since: int | None = None
        self.connects = 0
        self.last_error: str | None = None
        self.messages = 0
        self.records = 0
        self.acked = 0
        self._generation = 0
        self._open = Batch(0)
        self._ready: deque[Batch] = deque()
        self._pending = 0
        self._paused = False
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._driver: PahoDriver | None = None
        self._runner: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._disconnecting: asyncio.Task[None] | None = None
        self._connected_gauge = metrics.MQTT_CONNECTED.labels(broker=str(self.broker))

    # -- Listener protocol -----------------------------------------------------------------
    async def start(self) -> None:
        """Connect (or keep trying in the background) and start delivering."""
        client = new_client(
            self.client_id,
            mqtt5=self.settings.protocol == "5",
            connect_timeout_s=self.settings.connect_timeout_s,
        )
        tls = self._tls_context()  # bad TLS files fail start-up, not every reconnect
        if tls is not None:
            client.tls_set_context(tls)
        if self.settings.username is not None:
            password = self.settings.password
            client.username_pw_set(
                self.settings.username, password.get_secret_value() if password else None
            )
        self._driver = PahoDriver(client, self._on_message)
        self._stopping.clear()
        self._worker = asyncio.create_task(self._work(), name="mqtt_ingest:worker")
        self._runner = asyncio.create_task(self._run(), name="mqtt_ingest:connection")
        # Return once the first attempt is over, so /health says something true; a broker
        # that is down is retried in the background, not a start-up failure.
        await self._first_attempt.wait()

    async def stop(self) -> None:
        """Stop reading, deliver and acknowledge what arrived, leave the session on the broker."""
        driver = self._driver
        if driver is None:
            return
        self._stopping.set()
        driver.pause_reading()
        self._close_open_batch()
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.stop_timeout_s):
                while self._pending > 0:  # noqa: ASYNC110 - the worker owns the count
                    await asyncio.sleep(0.005)
        for task in (self._runner, self._worker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await driver.disconnect(DISCONNECT_TIMEOUT_S)
        self._set_state("stopped")
        self._driver = None

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.state == "connected" else "degraded",
            "broker": str(self.broker),
            "connection": self.state,
            "client_id": self.client_id,
            "protocol": self.settings.protocol,
            "subscriptions": self.settings.subscriptions,
            "session_present": self.session_present,
            "connected_since": (
                format_rfc3339_ms(self.connected_since) if self.connected_since else None
            ),
            "connects": self.connects,
            "last_error": self.last_error,
            "messages": self.messages,
            "records": self.records,
            "refused": dict(self.refusals.by_reason),
            "pending": self._pending,
        }

    # -- connection ------------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.broker.tls:
            return None
        tls = self.settings.tls
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls is not None and tls.cert:
            context.load_cert_chain(tls.cert, tls.key)
        return context

    def _connect_properties(self) -> Properties | None:
        if self.settings.protocol != "5":
            return None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        properties.ReceiveMaximum = self.settings.receive_maximum
        return properties

    async def _run(self) -> None:
        settings = self.settings
        delay = settings.reconnect_min_s
        while not self._stopping.is_set():
            started = asyncio.get_running_loop().time()
            try:
                await self._connect()
            except ConnectError as exc:
                self._connection_failed(str(exc))
            except Exception as exc:  # a bug must not end reconnecting for good
                log.exception("connecting to the gateway broker failed")
                self._connection_failed(f"{type(exc).__name__}: {exc}")
            else:
                self._first_attempt.set()
                assert self._driver is not None
                reason = await self._driver.lost
                self._connection_lost(reason)
                if asyncio.get_running_loop().time() - started >= STABLE_CONNECTION_S:
                    delay = settings.reconnect_min_s
            self._first_attempt.set()
            if self._stopping.is_set():
                return
            # Full jitter keeps a fleet of nodes from reconnecting in lockstep.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(random.uniform(delay / 2, delay)):
                    await self._stopping.wait()
            delay = min(delay * 2, settings.reconnect_max_s)

    async def _connect(self) -> None:
        driver = self._driver
        assert driver is not None
        settings = self.settings
        self._set_state("connecting")
        self._new_generation()
        self.session_present = await driver.connect(
            self.broker.host,
            self.broker.port,
            keepalive=settings.keepalive_s,
            timeout_s=settings.connect_timeout_s,
            clean_start=False,
            properties=self._connect_properties(),
        )
        await driver.subscribe(settings.subscriptions, settings.qos, settings.connect_timeout_s)
        self.connects += 1
        self.last_error = None
        self.connected_since = now_ms()
        metrics.labelled(metrics.MQTT_CONNECTS, "connected").inc()
        self._set_state("connected")
        log.info(
            "connected to the gateway broker",
            extra=fields(
                broker=str(self.broker),
                client_id=self.client_id,
                session_present=self.session_present,
                subscriptions=settings.subscriptions,
            ),
        )

    def _connection_failed(self, error: str) -> None:
        if self._driver is not None:
            self._driver.close()
        metrics.labelled(metrics.MQTT_CONNECTS, "failed").inc()
        self._set_state("disconnected")
        if error != self.last_error:  # one line per distinct error, not per retry
            log.warning(
                "cannot reach the gateway broker; retrying",
                extra=fields(broker=str(self.broker), error=error),
            )
        self.last_error = error

    def _connection_lost(self, reason: str) -> None:
        self._new_generation()
        self._set_state("disconnected")
        self.connected_since = None
        if not self._stopping.is_set():
            self.last_error = f"connection lost: {reason}"
            log.warning(
                "gateway broker connection lost; reconnecting",
                extra=fields(broker=str(self.broker), reason=reason),
            )

    def _set_state(self, state: str) -> None:
        self.state = state
        self._connected_gauge.set(1 if state == "connected" else 0)

    def _new_generation(self) -> None:
        # Messages of an older connection keep their batch (and generation): their
        # records are still delivered, their PUBACKs never sent.
        self._close_open_batch()
        self._generation += 1
        self._open = Batch(self._generation)

    # -- messages in (event-loop thread, called by paho from loop_read) --------------------
    def _on_message(self, message: paho.MQTTMessage) -> None:
        batch = self._open
        try:
            topic = message.topic
        except UnicodeDecodeError:
            result: Record | Refusal = Refusal(
                RefusalReason.UNKNOWN_TOPIC, None, repr(message._topic), "topic is not UTF-8"
            )
        else:
            result = self.decoder.decode(topic, bytes(message.payload), now_ms())
        if type(result) is Record:
            batch.records.append(result)
        else:
            assert isinstance(result, Refusal)
            self.refusals.record(result, asyncio.get_running_loop().time())
        if message.qos:
            batch.mids.append(message.mid)
        else:
            batch.qos0 += 1
        batch.messages += 1
        self._pending += 1
        if batch.messages >= self.settings.max_batch:
            self._close_open_batch()
        if self._pending >= self.settings.max_pending and not self._paused:
            self._paused = True
            if self._driver is not None:
                self._driver.pause_reading()
        if not self._wakeup.is_set():
            self._wakeup.set()

    def _close_open_batch(self) -> None:
        batch = self._open
        if batch.messages:
            self._ready.append(batch)
            self._open = Batch(batch.generation)

    # -- the worker: batches in arrival order, PUBACKs after accept ------------------------
    async def _work(self) -> None:
        while True:
            if not self._ready:
                self._close_open_batch()
            if not self._ready:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._ready.popleft()
            try:
                await self._deliver(batch)
            except Exception:
                log.exception("delivering gateway records failed")
                self._withhold(batch, "delivery failed")
            self._pending -= batch.messages
            if self._paused and self._pending <= self.settings.max_pending // 2:
                self._paused = False
                if self._driver is not None and not self._stopping.is_set():
                    self._driver.resume_reading()

    async def _deliver(self, batch: Batch) -> None:
        self.messages += batch.messages
        qos1 = len(batch.mids)
        if batch.qos0:
            metrics.labelled(metrics.MQTT_MESSAGES, "0").inc(batch.qos0)
        if qos1:
            metrics.labelled(metrics.MQTT_MESSAGES, "1").inc(qos1)
        records = batch.records
        safe = True
        if records:
            if qos1:
                safe = await self.pipeline.accept(records)
            else:
                await self.pipeline.submit(records)
            self.records += len(records)
        if not qos1:
            return
        if not safe:
            self._withhold(batch, "the pipeline did not confirm the records in time")
            return
        driver = self._driver
        if batch.generation != self._generation or driver is None or not driver.connected:
            # Arrived on a connection that is gone: the broker redelivers these.
            metrics.labelled(metrics.ACKS, PROTOCOL, "connection_gone").inc(qos1)
            return
        for mid in batch.mids:
            driver.ack(mid)
        self.acked += qos1
        metrics.labelled(metrics.ACKS, PROTOCOL, "acked").inc(qos1)

    def _withhold(self, batch: Batch, why: str) -> None:
        """No PUBACK: reconnect, so the broker sends every unacknowledged message again."""
        if not batch.mids:
            return
        metrics.labelled(metrics.ACKS, PROTOCOL, "withheld").inc(len(batch.mids))
        if batch.generation != self._generation:
            return  # that connection is already gone
        log.warning(
            "gateway messages not acknowledged; reconnecting for redelivery",
            extra=fields(reason=why, messages=len(batch.mids)),
        )
        self._new_generation()  # nothing more is acked on this connection
        if self._driver is not None:
            self._disconnecting = asyncio.create_task(self._driver.disconnect(DISCONNECT_TIMEOUT_S))
