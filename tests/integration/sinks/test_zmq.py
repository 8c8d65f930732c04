"""The zmq sink: conformance (no restart tests: there is no server), slow joiners, CURVE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from fleetgate.config import ConfigError
from fleetgate.forms import wire_payload
from fleetgate.records import Record
from fleetgate.sinks.base import Sink, SinkContext, TransientSinkError
from fleetgate.sinks.registry import sink_class
from fleetgate.sinks.zmq import ZmqSink
from tests.integration.services import free_port
from tests.integration.sinks.conformance import (
    Delivered,
    SinkConformance,
    SinkHarness,
    make_records,
    teltonika_record,
)

pytestmark = pytest.mark.integration

PROBE_TOPIC = "__probe__"


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll ``predicate`` until true or ``timeout``; the caller asserts on the outcome."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)


class Subscriber:
    """A SUB socket collecting everything, with an unbounded receive queue."""

    def __init__(self, addr: str, **options: Any) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 10)
        for name, value in options.items():
            setattr(self.sock, name, value)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(addr)
        self.messages: list[tuple[bytes, bytes]] = []
        self.task = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        while True:
            topic, payload = await self.sock.recv_multipart()
            self.messages.append((topic, payload))

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.sock.close(linger=0)
        self.ctx.term()


async def handshake(sink: ZmqSink, subscriber: Subscriber, timeout: float = 10) -> None:
    """Publish probes until the subscriber sees one: from then on nothing is dropped.

    PUB drops messages for subscribers whose subscription has not arrived yet (the slow
    joiner); asserting on anything sent before this returns would be a race.
    """
    probe = Record("probe", "probe", PROBE_TOPIC, 0, 0, {})
    deadline = time.monotonic() + timeout
    while not any(topic.endswith(PROBE_TOPIC.encode()) for topic, _ in subscriber.messages):
        assert time.monotonic() < deadline, "subscriber never joined"
        await sink.publish([probe])
        await asyncio.sleep(0.01)


class HandshakingZmqSink(ZmqSink):
    """The real sink; its start() additionally waits for the test's subscriber to join."""

    subscriber: Subscriber

    async def start(self) -> None:
        await super().start()
        await handshake(self, self.subscriber)


class ZmqHarness(SinkHarness):
    name = "zmq"
    restartable = False  # no server: the sink *is* the socket
    durable = False

    def __init__(self) -> None:
        super().__init__(None)
        self.addr = f"tcp://127.0.0.1:{free_port()}"
        self.subscriber: Subscriber | None = None

    async def make_sink(self, ctx: SinkContext) -> Sink:
        if self.subscriber is None:
            self.subscriber = Subscriber(self.addr)
        sink = HandshakingZmqSink({"addr": self.addr}, ctx)
        sink.subscriber = self.subscriber
        return sink

    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        assert self.subscriber is not None
        await until(lambda: self._count() >= expected, timeout)
        return [
            Delivered(topic.decode(), None, {}, payload)
            for topic, payload in self.subscriber.messages
            if not topic.endswith(PROBE_TOPIC.encode())
        ]

    def _count(self) -> int:
        assert self.subscriber is not None
        return sum(not t.endswith(PROBE_TOPIC.encode()) for t, _ in self.subscriber.messages)

    async def cleanup(self) -> None:
        if self.subscriber is not None:
            await self.subscriber.close()


class TestZmqConformance(SinkConformance):
    harness_class = ZmqHarness

    @pytest.fixture
    def harness_factory(self) -> Callable[[], SinkHarness]:
        return ZmqHarness


@pytest.fixture
def addr() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


async def test_two_frames_topic_then_payload(addr: str) -> None:
    sink = ZmqSink({"addr": addr}, SinkContext(namespace="tesla"))
    await sink.start()
    subscriber = Subscriber(addr)
    try:
        await handshake(sink, subscriber)
        subscriber.messages.clear()
        records = make_records(6)
        await sink.publish(records)
        await until(lambda: len(subscriber.messages) >= 6, 10)
    finally:
        await sink.close()
        await subscriber.close()
    assert subscriber.messages == [(f"tesla_{r.topic}".encode(), wire_payload(r)) for r in records]


def test_frames_go_through_the_compiled_send() -> None:
    """The sink sends through pyzmq's compiled Socket.send (the Python-level one in front
    of it only handles routing_id/group); the frames are checked by the test above."""
    from zmq.backend import Socket as CompiledSocket

    from fleetgate.sinks.zmq import _backend_send

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    try:
        send: Any = _backend_send(sock)
        assert send.__func__ is CompiledSocket.send
        assert send.__self__ is sock
    finally:
        sock.close(linger=0)
        ctx.term()


async def test_address_in_use_is_transient_and_rebinds_later(addr: str) -> None:
    blocker = ZmqSink({"addr": addr}, SinkContext())
    await blocker.start()
    sink = ZmqSink({"addr": addr}, SinkContext())
    with pytest.raises(TransientSinkError, match="cannot bind"):
        await sink.start()
    with pytest.raises(TransientSinkError):
        await sink.publish(make_records(1))
    await blocker.close()
    await sink.publish(make_records(1))  # binds lazily now that the address is free
    await sink.close()


def _keys(tmp_path: Path) -> dict[str, Any]:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    other_public, other_secret = zmq.curve_keypair()
    server_file = tmp_path / "server.json"
    server_file.write_text(
        json.dumps({"public": server_public.decode(), "secret": server_secret.decode()})
    )
    allowed_file = tmp_path / "allowed.json"
    allowed_file.write_text(json.dumps([client_public.decode()]))
    return {
        "server": (server_public, server_secret),
        "client": (client_public, client_secret),
        "other": (other_public, other_secret),
        "server_file": str(server_file),
        "allowed_file": str(allowed_file),
    }


async def _auth_events(sock: zmq.asyncio.Socket, want: set[int], timeout: float = 10) -> int:
    """First of the ``want`` events the monitor reports for ``sock``."""
    monitor = sock.get_monitor_socket()
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await recv_monitor_message(monitor)  # type: ignore[misc]
                if event["event"] in want:
                    return int(event["event"])
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


async def test_curve_allows_listed_clients_only(addr: str, tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    config = {
        "addr": addr,
        "server_key_json_path": keys["server_file"],
        "allowed_public_keys_json_path": keys["allowed_file"],
    }
    sink = ZmqSink(config, SinkContext(namespace="tesla"))
    await sink.start()
    server_public = keys["server"][0]
    allowed = Subscriber(
        addr,
        curve_serverkey=server_public,
        curve_publickey=keys["client"][0],
        curve_secretkey=keys["client"][1],
    )
    refused_ctx = zmq.asyncio.Context()
    refused = refused_ctx.socket(zmq.SUB)
    refused.curve_serverkey = server_public
    refused.curve_publickey, refused.curve_secretkey = keys["other"]
    refused.setsockopt(zmq.SUBSCRIBE, b"")
    outcome = asyncio.create_task(
        _auth_events(refused, {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_SUCCEEDED})
    )
    await asyncio.sleep(0)  # the monitor is attached before the socket connects
    refused.connect(addr)
    try:
        await handshake(sink, allowed)
        assert await outcome == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    finally:
        await sink.close()
        await allowed.close()
        refused.close(linger=0)
        refused_ctx.term()


async def test_verbose_logs_socket_events(addr: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fleetgate.sinks.zmq")
    sink = ZmqSink({"addr": addr, "verbose": True}, SinkContext())
    await sink.start()
    subscriber = Subscriber(addr)
    try:
        await handshake(sink, subscriber)
        await until(lambda: "ACCEPTED" in caplog.text, 5)
    finally:
        await sink.close()
        await subscriber.close()
    assert "socket event LISTENING" in caplog.text
    assert "socket event ACCEPTED" in caplog.text


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"zmq\.addr"):
        ZmqSink({}, SinkContext())
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="server_key_json_path"):
        ZmqSink({"addr": "tcp://127.0.0.1:1", "server_key_json_path": str(bad)}, SinkContext())
    assert sink_class("zmq") is ZmqSink


def test_destination_is_namespace_topic() -> None:
    sink = ZmqSink({"addr": "tcp://127.0.0.1:1"}, SinkContext(namespace="tesla"))
    assert sink.destination(teltonika_record("x", 1).topic) == "tesla_avl"
