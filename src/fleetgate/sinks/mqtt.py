"""``mqtt``: publish records to an MQTT broker.

Library: aiomqtt, an asyncio wrapper around paho-mqtt 2 (the Eclipse client). paho does
the protocol (QoS 1/2 handshakes, in-flight window, TLS); aiomqtt drives its socket from
the event loop, so waiting for a PUBACK is an ``await`` with a timeout and no thread.

Messages (spec section 11.1): a source that registered a form with
:func:`fleetgate.forms.register_mqtt_form` is published as that form says (Tesla:
one message per field under ``<topic_base>/<VIN>/v/<Field>``, alerts, errors,
connectivity). Every other record becomes one message ``<topic_base>/<device_id>/<topic>``
carrying :func:`~fleetgate.forms.wire_payload`, which is the record JSON for every
source without a wire form of its own (Teltonika, MQTT gateways). QoS and the retain
flag come from the config for every message.

Confirmation: every message of the batch completed (PUBACK for QoS 1, PUBCOMP for QoS 2,
written to the socket for QoS 0) within ``publish_timeout_ms``, which the reference spends
per record; fleetgate grants it per thousand messages of a batch. Any failure drops the
connection and raises :class:`TransientSinkError`; the next publish reconnects (the
runner's backoff paces the attempts). TLS: ``mqtt.tls.server_cert``/``server_key`` are the
*client* certificate pair presented to the broker, ``ca_file`` the CA that signed the
broker's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field, field_validator

from fleetgate.forms import mqtt_form, wire_payload
from fleetgate.records import Record
from fleetgate.settings import Section, TlsFiles
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

_MESSAGES_PER_BUDGET = 1000
_MAX_INFLIGHT = 200
# Messages awaiting their PUBACK at once. aiomqtt scans every pending call on each publish
# (quadratic in a whole batch); a window of ten keeps that cheap and still overlaps
# round trips.
_WINDOW = 10


class _NoPendingCallWarnings(logging.Filter):
    # aiomqtt warns once per publish whenever more than ten await their PUBACK; a sink
    # that publishes whole batches concurrently always has more.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("There are %d pending")


_client_log = logging.getLogger("fleetgate.sinks.mqtt.client")
_client_log.addFilter(_NoPendingCallWarnings())


class MqttSettings(Section):
    """The ``mqtt`` section (the reference's keys and defaults)."""

    broker: str = ""
    client_id: str = ""
    username: str = ""
    password: str = ""
    topic_base: str = ""
    qos: int = Field(0, ge=0, le=2)
    retained: bool = False
    connect_timeout_ms: int = Field(30_000, ge=0)
    publish_timeout_ms: int = Field(2_500, ge=0)
    disconnect_timeout_ms: int = Field(250, ge=0)
    connect_retry_interval_ms: int = Field(10_000, ge=0)
    keep_alive_seconds: int = Field(30, ge=0)
    tls: TlsFiles | None = None

    @field_validator("broker")
    @classmethod
    def _host_and_port(cls, broker: str) -> str:
        host, sep, port = broker.rpartition(":")
        if not sep:
            host, port = broker, "1883"
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port (got {broker!r})")
        return broker

    @property
    def address(self) -> tuple[str, int]:
        host, sep, port = self.broker.rpartition(":")
        if not sep:
            return self.broker.strip("[]"), 1883
        return host.strip("[]"), int(port)


class MqttSink(Sink):
    name: ClassVar[str] = "mqtt"
    Settings: ClassVar[type[Section]] = MqttSettings
    label: ClassVar[str | None] = "MQTT"
    settings: MqttSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        config = self.settings
        self.host, self.port = config.address
        self.topic_base = config.topic_base
        self.qos = config.qos
        self.retained = config.retained
        self.client_id = config.client_id or None
        self.username = config.username or None
        self.password = config.password or None
        self.connect_timeout_s = config.connect_timeout_ms / 1000
        self.publish_timeout_s = config.publish_timeout_ms / 1000
        self.disconnect_timeout_s = config.disconnect_timeout_ms / 1000
        self.keepalive = config.keep_alive_seconds
        self.tls = config.tls
        self._client: Any = None

    def describe(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"mqtt broker {scheme}://{self.host}:{self.port}"

    def messages(self, record: Record) -> list[tuple[str, bytes]]:
        """The (topic, payload) messages one record becomes."""
        form = mqtt_form(record.source)
        if form is not None:
            return form(record, self.topic_base)
        topic = f"{self.topic_base}/{record.device_id}/{record.topic}"
        return [(topic, wire_payload(record, self.context.transmit_decoded))]

    async def start(self) -> None:
        await self._connect()

    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.tls
        if not tls:
            return None
        context = ssl.create_default_context(cafile=tls.ca_file or None)
        cert, key = tls.server_cert, tls.server_key
        if cert:
            context.load_cert_chain(cert, key or None)
        return context

    async def _connect(self) -> Any:
        if self._client is not None:
            if not _lost(self._client):
                return self._client
            # The broker went away since the last publish: publishing on the dead
            # session would only time out, so reconnect now.
            await self._disconnect()
        import aiomqtt

        try:
            tls_context = self._tls_context()
        except (OSError, ssl.SSLError) as exc:
            raise PermanentSinkError(f"mqtt: cannot load TLS files: {exc}") from exc
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            keepalive=self.keepalive,
            timeout=self.connect_timeout_s,
            tls_context=tls_context,
            max_inflight_messages=_MAX_INFLIGHT,
            logger=_client_log,
        )
        try:
            # aiomqtt's own timeout covers CONNACK; the outer one also bounds the TCP/TLS
            # connect it runs in a worker thread.
            await asyncio.wait_for(client.__aenter__(), self.connect_timeout_s + 1.0)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise TransientSinkError(f"mqtt: cannot connect to {self.describe()}: {exc}") from exc
        self._client = client
        return client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    client.__aexit__(None, None, None), self.disconnect_timeout_s + 1.0
                )
            # aiomqtt stores an unexpected disconnect as a future's exception and only
            # re-raises it from a context it no longer has; mark it seen.
            if _lost(client):
                client._disconnected.exception()

    async def publish(self, batch: Sequence[Record]) -> None:
        messages: list[tuple[str, bytes]] = []
        for record in batch:
            try:
                messages.extend(self.messages(record))
            except Exception as exc:
                raise PermanentSinkError(
                    f"mqtt: cannot form messages for {record.device_id}/{record.topic}: {exc}"
                ) from exc
        if not messages:
            return
        import aiomqtt

        client = await self._connect()
        budget = self.publish_timeout_s * math.ceil(len(messages) / _MESSAGES_PER_BUDGET)
        window = asyncio.Semaphore(_WINDOW)

        async def send(topic: str, payload: bytes) -> None:
            async with window:
                await client.publish(
                    topic, payload, qos=self.qos, retain=self.retained, timeout=budget
                )

        sends = [send(topic, payload) for topic, payload in messages]
        error: BaseException | None = None
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*sends, return_exceptions=True), budget + 1.0
            )
            error = next((r for r in results if isinstance(r, BaseException)), None)
        except TimeoutError as exc:
            error = exc
        if error is not None:
            # The session is in an unknown state: start clean on the next attempt.
            await self._disconnect()
            if not isinstance(error, aiomqtt.MqttError | OSError | TimeoutError):
                raise error
            reason = str(error) or type(error).__name__
            raise TransientSinkError(f"mqtt: publish failed: {reason}") from error

    async def close(self) -> None:
        await self._disconnect()


def _lost(client: Any) -> bool:
    """True once aiomqtt saw the connection drop (it never reconnects by itself)."""
    disconnected = getattr(client, "_disconnected", None)
    return (
        isinstance(disconnected, asyncio.Future)
        and disconnected.done()
        and not disconnected.cancelled()
    )
