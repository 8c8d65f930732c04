"""Tesla's ``monitoring`` section, served: StatsD over a real UDP socket, the profiling
endpoints, and the reference's process metrics on ``/metrics``; ``serve``'s event-loop lag
probe."""

from __future__ import annotations

import asyncio
import contextlib
import pstats
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetgate.app import Server, serve
from fleetgate.config import build_config
from fleetgate.observability.metrics import REGISTRY
from tests.ports import free_port

pytestmark = pytest.mark.integration

# The Teltonika protocol document's codec 8 example (one record) and its tracker's IMEI.
IMEI_HANDSHAKE = bytes.fromhex("000f333536333037303432343431303133")
FRAME = bytes.fromhex(
    "000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101"
    "425e0f01f10000601a014e0000000000000000010000c7cf"
)


@pytest.fixture
def statsd_socket() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        yield sock


async def started(tmp_path: Path, **overrides: Any) -> Server:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "api": {"enabled": False},
        "store": {"enabled": False},
        "spool": {"enabled": False},
        "ack_level": "receive",
        "teltonika": {"host": "127.0.0.1", "port": 0, "udp_enabled": False},
    }
    data.update(overrides)
    server = Server(build_config(data, environ={}))
    await server.start()
    return server


@pytest.fixture
async def profiler(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    port, path = free_port(), tmp_path / "live.pstats"
    server = await started(
        tmp_path, monitoring={"profiler_port": port, "profiling_path": str(path)}
    )
    yield port, path
    await server.stop()


async def received(sock: socket.socket, wanted: str, timeout: float = 5.0) -> str:
    """Datagrams until one line starts with ``wanted``; all lines read, joined."""
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            data = await loop.run_in_executor(None, sock.recv, 65536)
        except TimeoutError:
            continue
        lines += data.decode().splitlines()
        if any(line.startswith(wanted) for line in lines):
            return "\n".join(lines)
    raise AssertionError(f"no {wanted!r} in {lines}")


async def test_metrics_arrive_at_a_statsd_server(
    tmp_path: Path, statsd_socket: socket.socket
) -> None:
    host, port = statsd_socket.getsockname()
    server = await started(
        tmp_path,
        monitoring={"statsd": {"host": f"{host}:{port}", "prefix": "fleet.", "flush_period": 50}},
    )
    try:
        assert "fleet.uptime_sec:" in await received(statsd_socket, "fleet.uptime_sec:")
        listener = server.listener("teltonika")
        assert listener is not None
        tracker_port = int(listener.health()["address"].rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", tracker_port)
        writer.write(IMEI_HANDSHAKE)
        assert await reader.readexactly(1) == b"\x01"
        writer.write(FRAME)
        assert await reader.readexactly(4) == b"\x00\x00\x00\x01"
        writer.close()
        wanted = "fleet.fleetgate_records_total,source=teltonika,topic=position:1|c"
        assert wanted in (await received(statsd_socket, wanted)).splitlines()
    finally:
        await server.stop()


async def test_profiling_endpoints_answer_as_the_reference(
    profiler: tuple[int, Path],
) -> None:
    port, path = profiler
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert (await http.get("/debug/pprof/")).status_code == 200
        gc = (await http.get("/gc_stats")).json()
        assert len(gc["generations"]) == 3 and gc["resident_bytes"] > 0
        assert (await http.get("/live_profiler")).json() == {"error": "mode not specified"}
        off = await http.get("/live_profiler?mode=off")
        assert off.status_code == 304
        on = await http.get("/live_profiler?mode=on")
        assert (on.status_code, on.json()) == (200, {"result": "mode on"})
        assert (await http.get("/live_profiler?mode=on")).status_code == 304
        assert (await http.get("/live_profiler?mode=off")).json() == {"result": "mode off"}
        assert pstats.Stats(str(path)).total_calls > 0
        profile = await http.get("/debug/pprof/profile?seconds=0.2")
        assert profile.status_code == 200
        dump = path.with_name("profile.pstats")
        dump.write_bytes(profile.content)
        pstats.Stats(str(dump))  # a pstats file Python's own tools read
        assert "task " in (await http.get("/debug/pprof/goroutine")).text


async def test_live_profiler_without_a_path_is_not_configured(tmp_path: Path) -> None:
    port = free_port()
    server = await started(tmp_path, monitoring={"profiler_port": port})
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(f"http://127.0.0.1:{port}/live_profiler?mode=on")
        assert (reply.status_code, reply.json()) == (405, {"error": "profiler not configured"})
    finally:
        await server.stop()


async def test_process_metrics_on_the_monitoring_port(tmp_path: Path) -> None:
    port = free_port()
    server = await started(tmp_path, monitoring={"prometheus_metrics_port": port})
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        await server.stop()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["num_connections"] == 0
    assert values["memory_allocated_bytes"] > 10_000_000  # a Python server: tens of MB
    assert values["num_goroutine"] >= 1
    assert "uptime_sec" in values


def lag_observations() -> float:
    return REGISTRY.get_sample_value("fleetgate_event_loop_lag_seconds_count") or 0.0


async def test_serve_probes_the_loop_until_it_stops(tmp_path: Path) -> None:
    port = free_port()
    config = build_config(
        {
            "data_dir": str(tmp_path / "data"),
            "store": {"enabled": False},
            "spool": {"enabled": False},
            "ack_level": "receive",
            "tesla_enabled": False,
            "api": {"host": "127.0.0.1", "port": port},
            "teltonika": {"host": "127.0.0.1", "port": 0, "udp_enabled": False},
        },
        environ={},
    )
    loop = asyncio.get_running_loop()
    started: asyncio.Future[Server] = loop.create_future()
    task = asyncio.create_task(serve(config, ready=started.set_result))
    try:
        await asyncio.wait_for(asyncio.shield(started), 30)
        before = lag_observations()
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(100):  # the probe ticks every 0.1 s: seen within 10 s
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                if lag_observations() > before:
                    break
                await asyncio.sleep(0.1)
        assert lag_observations() > before
        assert "fleetgate_event_loop_lag_seconds_bucket" in text
    finally:
        signal.raise_signal(signal.SIGTERM)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
    stopped = lag_observations()
    await asyncio.sleep(0.3)
    assert lag_observations() == stopped
