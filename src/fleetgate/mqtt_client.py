"""paho-mqtt 2 on the asyncio event loop, with manual acknowledgement (and awaitable
publishes, which the gateway simulator uses).

paho does the protocol (packets, QoS handshakes, keepalive, MQTT 5 properties, TLS) and
offers an *external event loop* API: the application watches the socket and calls
``loop_read``/``loop_write``/``loop_misc``. This module is that glue, so paho's callbacks
run on the event-loop thread (no thread hop per message) and PUBACKs go out exactly when
the listener calls :meth:`PahoDriver.ack`.

Why not aiomqtt (used by the MQTT sink): its current release (2.5.1) has no manual
acknowledgement, so every QoS 1 message would be PUBACKed on receipt, before the records
are safe. paho's ``manual_ack=True`` + ``ack(mid, qos)`` is exactly that promise.

Only the TCP/TLS connect runs in a worker thread (paho's ``connect`` blocks); socket
callbacks are installed after it returns, so paho never touches the loop from that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

# Packets handled per readable event before yielding to other tasks.
READS_PER_WAKEUP = 256
MISC_INTERVAL_S = 1.0

MessageHandler = Callable[[paho.MQTTMessage], None]


class ConnectError(Exception):
    """The broker could not be reached, refused us, or never answered CONNECT/SUBSCRIBE."""


def new_client(
    client_id: str, *, mqtt5: bool, connect_timeout_s: float, clean_session: bool = False
) -> paho.Client:
    """A paho client that leaves PUBACKs to the application."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if mqtt5 else clean_session,
        protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311,
        manual_ack=True,
        reconnect_on_failure=False,
    )
    # Bounds the TCP connect and TLS handshake (paho only lets it be set while idle).
    client.connect_timeout = connect_timeout_s
    return client


class PahoDriver:
    """One paho client driven by the running event loop."""

    def __init__(self, client: paho.Client, on_message: MessageHandler) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self._on_message_handler = on_message
        self._messages = 0
        self._sock: Any = None
        self._paused = False
        self._misc: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._publishes: dict[int, asyncio.Future[None]] = {}
        self.lost: asyncio.Future[str] = self.loop.create_future()
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish

    # -- connection ----------------------------------------------------------------------------
    async def connect(
        self,
        host: str,
        port: int,
        *,
        keepalive: int,
        timeout_s: float,
        clean_start: bool = False,
        properties: Properties | None = None,
    ) -> bool:
        """Connect and wait for CONNACK; True when the broker resumed our session."""
        client = self.client
        self._detach()
        self.lost = self.loop.create_future()
        self._connack = self.loop.create_future()
        connect = partial(
            client.connect, host, port, keepalive, clean_start=clean_start, properties=properties
        )
        if client.protocol != paho.MQTTv5:
            connect = partial(client.connect, host, port, keepalive)
        try:
            # Bounded by the client's connect_timeout; not abandoned
            # on a timeout of ours, so paho never runs in two threads at once.
            await self.loop.run_in_executor(None, connect)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectError(f"cannot connect: {exc}") from exc
        self._attach()
        try:
            async with asyncio.timeout(timeout_s):
                return await self._connack
        except TimeoutError:
            self.close()
            raise ConnectError(f"no CONNACK within {timeout_s:g} s") from None
        finally:
            self._connack = None

    async def subscribe(
        self, filters: Sequence[str], qos: int, timeout_s: float
    ) -> list[ReasonCode]:
        """SUBSCRIBE and wait for the SUBACK; ConnectError if any filter was refused."""
        if self.client.protocol == paho.MQTTv5:
            # Retained messages once, when the subscription is new: not again on every
            # reconnect of a persistent session (they would be ingested each time).
            options = SubscribeOptions(
                qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            request: Any = [(topic, options) for topic in filters]
        else:
            request = [(topic, qos) for topic in filters]
        if self.lost.done():
            raise ConnectError(f"connection lost: {self.lost.result()}")
        rc, mid = self.client.subscribe(request)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectError(f"cannot subscribe: {paho.error_string(rc)}")
        waiter: asyncio.Future[list[ReasonCode]] = self.loop.create_future()
        self._subacks[mid] = waiter
        try:
            async with asyncio.timeout(timeout_s):
                codes = await waiter
        except TimeoutError:
            raise ConnectError(f"no SUBACK within {timeout_s:g} s") from None
        finally:
            self._subacks.pop(mid, None)
        refused = [
            f"{topic} ({code})"
            for topic, code in zip(filters, codes, strict=False)
            if code.is_failure
        ]
        if refused or len(codes) != len(filters):
            raise ConnectError(f"broker refused the subscription: {', '.join(refused)}")
        return codes

    async def publish(self, topic: str, payload: bytes, qos: int, timeout_s: float) -> None:
        """PUBLISH; returns once written (QoS 0) or PUBACKed (QoS 1), else ConnectError."""
        if not self.connected:
            raise ConnectError("not connected")
        info = self.client.publish(topic, payload, qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectError(f"cannot publish: {paho.error_string(info.rc)}")
        if info.is_published():
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._publishes[info.mid] = waiter
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            raise ConnectError(f"no PUBACK within {timeout_s:g} s") from None
        finally:
            self._publishes.pop(info.mid, None)

    def ack(self, mid: int) -> None:
        """PUBACK one QoS 1 message."""
        self.client.ack(mid, 1)

    async def disconnect(self, timeout_s: float) -> None:
        """Send DISCONNECT (the session stays on the broker) and wait for the socket to close."""
        if not self.connected:
            self.close()
            return
        self.client.disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.lost)
        self.close()

    def close(self) -> None:
        """Drop the socket now (no DISCONNECT)."""
        sock = self.client.socket()
        self._detach()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            self._set_lost("closed")

    @property
    def connected(self) -> bool:
        return self.client.is_connected() and not self.lost.done()

    # -- flow control ------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self._paused and self._sock is not None:
            self.loop.remove_reader(self._sock)
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused and self._sock is not None:
            self.loop.add_reader(self._sock, self._on_readable)
            # TLS may hold decrypted bytes the socket no longer signals.
            self.loop.call_soon(self._on_readable)
        self._paused = False

    # -- socket plumbing (paho's external-loop API) ------------------------------------------
    def _attach(self) -> None:
        client = self.client
        sock = client.socket()
        if sock is None:
            raise ConnectError("connection closed during connect")
        self._sock = sock
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_socket_close = self._socket_closed
        if not self._paused:
            self.loop.add_reader(sock, self._on_readable)
        if client.want_write():
            self.loop.add_writer(sock, self._on_writable)
        self._misc = self.loop.call_later(MISC_INTERVAL_S, self._on_misc)

    def _detach(self) -> None:
        client = self.client
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None
        client.on_socket_close = None
        sock, self._sock = self._sock, None
        if sock is not None:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, self._on_writable)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    def _socket_closed(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock is self._sock:
            self._detach()

    def _on_readable(self) -> None:
        client = self.client
        sock = self._sock
        for _ in range(READS_PER_WAKEUP):
            if self._paused or self._sock is not sock or sock is None:
                return
            before = self._messages
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # paho closed the socket and called on_disconnect
            if self._messages == before and not (
                isinstance(sock, ssl.SSLSocket) and sock.pending()
            ):
                return  # nothing more buffered; the reader fires again on new data

    def _on_writable(self) -> None:
        self.client.loop_write()

    def _on_misc(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        self.client.loop_misc()  # keepalive PINGREQ, ping timeout
        if self._sock is not None:
            self._misc = self.loop.call_later(MISC_INTERVAL_S, self._on_misc)

    # -- paho callbacks (event-loop thread) ----------------------------------------------------
    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._messages += 1
        self._on_message_handler(message)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        waiter = self._connack
        if waiter is None or waiter.done():
            return
        if reason.is_failure:
            waiter.set_exception(ConnectError(f"broker refused the connection: {reason}"))
        else:
            waiter.set_result(bool(flags.session_present))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        text = str(reason)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectError(f"connection closed before CONNACK: {text}"))
        self._set_lost(text)
        self._detach()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        waiter = self._subacks.get(mid)
        if waiter is not None and not waiter.done():
            waiter.set_result(list(codes))

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        waiter = self._publishes.get(mid)
        if waiter is not None and not waiter.done():
            if reason.is_failure:
                waiter.set_exception(ConnectError(f"broker refused the message: {reason}"))
            else:
                waiter.set_result(None)

    def _set_lost(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
        waiters: list[asyncio.Future[Any]] = [*self._subacks.values(), *self._publishes.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectError(f"connection lost: {reason}"))
