"""SIGTERM with frames in flight, over real sockets: what was received is answered.

The server runs as ``fleetgate serve`` does (``serve()`` with its signal handlers) and gets
a real SIGTERM. A frame whose records the pipeline still holds when the signal comes gets
its ack once they are safe, then the connection closes cleanly; the listener accepts no
new connection meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetgate.app import Server, serve
from fleetgate.config import build_config
from fleetgate.protocols.teltonika.encoder import encode_imei
from fleetgate.records import Record
from fleetgate.sinks.base import Sink
from fleetgate.sinks.registry import register_sink
from tests.teltonika_vectors import frame

pytestmark = pytest.mark.integration

TIMEOUT = 5.0
IMEI = "356307042441013"


class HeldSink(Sink):
    """Confirms only once the test releases it (records in flight at SIGTERM)."""

    name = "test-held"
    gate: asyncio.Event | None = None
    received = 0

    async def publish(self, batch: Sequence[Record]) -> None:
        assert HeldSink.gate is not None
        HeldSink.received += len(batch)
        await HeldSink.gate.wait()


register_sink(HeldSink)


@contextlib.asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[tuple[Server, asyncio.Task[None]]]:
    """``serve()`` in this process, as the CLI runs it; stopped by a real SIGTERM."""
    started: asyncio.Future[Server] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(build_config(config, environ={}), ready=started.set_result))
    try:
        server = await asyncio.wait_for(asyncio.shield(started), TIMEOUT)
        yield server, task
    finally:
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


def teltonika_config(tmp_path: Path, **teltonika: Any) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path),
        "api": {"enabled": False},
        "tesla_enabled": False,
        "records": {"*": ["test-held"]},
        # The ack waits for the held sink: the frame is in flight until the test lets go.
        "ack_policy": {"teltonika": ["test-held"]},
        "teltonika": {"host": "127.0.0.1", "port": 0, "udp_enabled": False, **teltonika},
    }


def port_of(server: Server) -> int:
    listener = server.listener("teltonika")
    assert listener is not None
    return int(listener.health()["address"].rsplit(":", 1)[1])


async def tracker(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_imei(IMEI))
    assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x01"
    return reader, writer


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_a_frame_in_flight_at_sigterm_is_acked_then_the_socket_closes(
    tmp_path: Path,
) -> None:
    HeldSink.gate = asyncio.Event()
    HeldSink.received = 0
    async with serving(teltonika_config(tmp_path, shutdown_timeout_s=10)) as (server, task):
        port = port_of(server)
        busy_reader, busy = await tracker(port)
        idle_reader, idle = await tracker(port)
        busy.write(frame("doc-c8-tcp-example1"))
        async with asyncio.timeout(TIMEOUT):
            while HeldSink.received == 0:  # noqa: ASYNC110 - the sink holds the record
                await asyncio.sleep(0.01)

        os.kill(os.getpid(), signal.SIGTERM)

        # Stopped accepting at once; the idle tracker is closed (nothing owed to it)...
        async with asyncio.timeout(TIMEOUT):
            while not await refuses_connections(port):  # noqa: ASYNC110 - polls a port
                await asyncio.sleep(0.01)
        assert await asyncio.wait_for(idle_reader.read(), TIMEOUT) == b""
        # ...while the busy one still waits for its answer.
        assert not task.done()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(busy_reader.read(1), 0.3)

        HeldSink.gate.set()
        # The ack, then FIN: nothing after it.
        assert await asyncio.wait_for(busy_reader.readexactly(4), TIMEOUT) == b"\x00\x00\x00\x01"
        assert await asyncio.wait_for(busy_reader.read(), TIMEOUT) == b""
        await asyncio.wait_for(task, 30)
        busy.close()
        idle.close()


async def test_a_frame_not_safe_by_the_deadline_gets_no_ack(tmp_path: Path) -> None:
    HeldSink.gate = asyncio.Event()
    HeldSink.received = 0
    async with serving(teltonika_config(tmp_path, shutdown_timeout_s=0.5)) as (server, task):
        reader, writer = await tracker(port_of(server))
        writer.write(frame("doc-c8-tcp-example1"))
        async with asyncio.timeout(TIMEOUT):
            while HeldSink.received == 0:  # noqa: ASYNC110 - the sink holds the record
                await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        # Closed without an ack: the tracker keeps the record and resends it.
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        HeldSink.gate.set()  # let the pipeline's own shutdown finish quickly
        await asyncio.wait_for(task, 30)
        writer.close()
