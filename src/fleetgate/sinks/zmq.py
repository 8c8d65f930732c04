"""``zmq``: Tesla's ZMQ dispatcher, a PUB socket bound to ``zmq.addr``.

Library: pyzmq, the libzmq binding (the reference uses libzmq through Go). A PUB socket never
blocks on send, so the plain (non-asyncio) socket is used: a batch is a tight loop of
``send`` calls (two frames a message) with no event-loop round trip per message.

Each record is one two-frame message ``[<namespace>_<topic>, payload]`` (payload =
:func:`~fleetgate.forms.wire_payload`), so subscribers filter by prefix on the first frame.
No key, no headers, as in the reference.

Confirmation = ``send`` returned, which is all PUB/SUB offers: ZeroMQ delivers to the
subscribers connected *and subscribed* at that moment, and drops messages for a subscriber
whose queue holds ``zmq.send_hwm`` messages (fleetgate addition; default 100,000, libzmq's
is 1,000). A subscriber that connects late misses what was sent before its subscription
reached the socket (the "slow joiner"). Use a broker sink when records must not be lost.

CURVE (spec §11.3): ``server_key_json_path`` names a JSON file ``{"secret": z85, "public":
z85}`` and turns on CURVE server mode; ``allowed_public_keys_json_path`` names a JSON array
of z85 client public keys, checked by a ZAP handler for every domain (without it, any client
with a valid CURVE handshake is accepted). ``verbose`` logs socket events at debug level.

A bind that fails (address in use) is transient: the runner retries and the next publish
binds again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from fleetgate.forms import wire_payloads
from fleetgate.records import Record
from fleetgate.settings import ConfigError, Section
from fleetgate.sinks.base import Sink, SinkContext, TransientSinkError

if TYPE_CHECKING:
    # pyzmq is imported when the sink binds, not when the config is read.
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("fleetgate.sinks.zmq")



def load_server_keys(path: str) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from ``{"secret": ..., "public": ...}``."""
    try:
        keys = json.loads(Path(path).read_text())
        return keys["public"].encode(), keys["secret"].encode()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"zmq.server_key_json_path: cannot read keys from {path}: {exc}") from exc


def load_allowed_keys(path: str) -> frozenset[bytes]:
    try:
        keys = json.loads(Path(path).read_text())
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("expected a JSON array of z85 strings")
        return frozenset(k.encode() for k in keys)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"zmq.allowed_public_keys_json_path: {path}: {exc}") from exc


class _AllowList:
    """ZAP credentials provider: a client key is allowed when it is in the list."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys
        if not allowed:
            log.warning("zmq: refused CURVE client key %s", key.decode(errors="replace"))
        return allowed


class ZmqSettings(Section):
    """The ``zmq`` section (reference keys, plus ``send_hwm``)."""

    addr: str = ""
    server_key_json_path: str = ""
    allowed_public_keys_json_path: str = ""
    verbose: bool = False
    # fleetgate addition: messages queued per subscriber before PUB drops (ZMQ_SNDHWM).
    send_hwm: int = Field(100_000, ge=0)


class ZmqSink(Sink):
    name: ClassVar[str] = "zmq"
    Settings: ClassVar[type[Section]] = ZmqSettings
    label: ClassVar[str | None] = "ZMQ"
    settings: ZmqSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        if not self.settings.addr:
            raise ConfigError("zmq.addr: a bind address is required (e.g. tcp://127.0.0.1:5284)")
        s = self.settings
        self._server_keys = (
            load_server_keys(s.server_key_json_path) if s.server_key_json_path else None
        )
        self._allowed = (
            load_allowed_keys(s.allowed_public_keys_json_path)
            if s.allowed_public_keys_json_path
            else None
        )
        self._zctx: zmq.Context[Any] | None = None
        self._socket: zmq.Socket[Any] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._monitor: threading.Thread | None = None
        self._topics: dict[str, bytes] = {}

    def describe(self) -> str:
        return f"zmq {self.settings.addr}"

    async def start(self) -> None:
        self._bind()

    def _bind(self) -> zmq.Socket[Any]:
        if self._socket is not None:
            return self._socket
        import zmq
        from zmq.auth.thread import ThreadAuthenticator

        s = self.settings
        zctx: zmq.Context[Any] = zmq.Context()
        sock: zmq.Socket[Any] = zctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, s.send_hwm)
        sock.setsockopt(zmq.LINGER, 1000)  # close() waits this long to flush to subscribers
        try:
            if self._server_keys is not None:
                if self._allowed is not None:
                    self._auth = ThreadAuthenticator(zctx, log=log)
                    self._auth.start()
                    self._auth.configure_curve_callback("*", _AllowList(self._allowed))
                sock.curve_publickey, sock.curve_secretkey = self._server_keys
                sock.curve_server = True
            if s.verbose:
                self._monitor = threading.Thread(
                    target=_log_events, args=(sock.get_monitor_socket(),), daemon=True
                )
                self._monitor.start()
            sock.bind(s.addr)
        except zmq.ZMQError as exc:
            self._teardown(sock, zctx)
            raise TransientSinkError(f"{self.describe()}: cannot bind: {exc}") from exc
        self._zctx, self._socket = zctx, sock
        return sock

    async def publish(self, batch: Sequence[Record]) -> None:
        import zmq

        sock = self._bind()
        # Every payload made before the first frame goes: a failure between a message's
        # frames would leave a half message that the next send completes, and a record
        # that cannot be serialised now fails the batch before any of it was sent.
        payloads = wire_payloads(batch, self.context.transmit_decoded)
        # Each message's two frames sent as send_multipart sends them, without its per-call
        # type checks and enum flag arithmetic (0.6 instead of 2 us a message), through the
        # libzmq binding's own send: pyzmq's Python-level Socket.send in front of it only
        # adds routing_id/group handling (SERVER and RADIO sockets, never PUB) and cost
        # another 0.25 us a frame. The flags as plain ints, since pyzmq's Flag enums cost an
        # enum operation per use.
        send = _backend_send(sock)
        more, last = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)
        # A batch's records share a few topic strings (the same objects, run after run).
        topic_text: str | None = None
        topic = b""
        try:
            for record, payload in zip(batch, payloads, strict=True):
                if record.topic is not topic_text:
                    topic_text = record.topic
                    topic = self._topic_frame(topic_text)
                send(topic, more)
                send(payload, last)
        except zmq.ZMQError as exc:
            raise TransientSinkError(f"{self.describe()}: {exc}") from exc

    def _topic_frame(self, topic: str) -> bytes:
        """The first frame of ``topic``'s messages (cached: topics are few)."""
        frame = self._topics.get(topic)
        if frame is None:
            frame = self.destination(topic).encode()
            if len(self._topics) < 1024:  # topics come from records: bounded
                self._topics[topic] = frame
        return frame

    async def close(self) -> None:
        sock, zctx = self._socket, self._zctx
        self._socket = self._zctx = None
        if sock is not None and zctx is not None:
            # LINGER lets queued messages reach subscribers; don't block the loop meanwhile.
            await asyncio.to_thread(self._teardown, sock, zctx)

    def _teardown(self, sock: zmq.Socket[Any], zctx: zmq.Context[Any]) -> None:
        if self._monitor is not None:
            sock.disable_monitor()
            self._monitor.join(timeout=2)
            self._monitor = None
        sock.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        zctx.term()


def _backend_send(sock: zmq.Socket[Any]) -> Callable[[bytes, int], Any]:
    """``sock.send`` of the libzmq binding (pyzmq's compiled ``Socket`` base class), bound
    to ``sock``; the Python-level ``Socket.send`` if this pyzmq has no such base."""
    import zmq.backend

    base = zmq.backend.Socket
    if isinstance(sock, base):
        return base.send.__get__(sock)  # type: ignore[no-any-return]
    return sock.send


def _log_events(monitor: zmq.Socket[Any]) -> None:
    """Log socket events (``zmq.verbose``) until the monitor is disabled."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    names = {
        value: name.removeprefix("EVENT_")
        for name, value in vars(zmq).items()
        if name.startswith("EVENT_") and isinstance(value, int)
    }
    try:
        while True:
            event = recv_monitor_message(monitor)
            name = names.get(event["event"], str(event["event"]))
            log.debug("zmq: socket event %s %s", name, event.get("endpoint", b"").decode())
            if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                break
    except zmq.ZMQError:
        pass
    finally:
        monitor.close(linger=0)
