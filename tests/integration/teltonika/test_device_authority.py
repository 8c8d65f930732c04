"""Device authority over real sockets: the handshake's known/unknown label, strict and lax
modes, and the allow-list in the real Redis on 127.0.0.1:6379 (a key of each test's own),
which keeps its last list while Redis cannot be reached."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from fleetgate.app import Server
from fleetgate.listeners.teltonika.authority import RedisAllowList
from fleetgate.listeners.teltonika.tcp import TeltonikaListener
from fleetgate.observability import metrics
from fleetgate.protocols.teltonika.encoder import encode_imei
from tests.integration.services import free_port
from tests.integration.teltonika.helpers import start

pytestmark = pytest.mark.integration

TIMEOUT = 5.0
LISTED = "356307042441013"
ALSO_LISTED = "356307042441014"
UNLISTED = "356307042441099"


def tcp_listener(server: Server) -> TeltonikaListener:
    listener = server.listener("teltonika")
    assert isinstance(listener, TeltonikaListener)
    return listener


async def handshake_reply(server: Server, imei: str) -> bytes:
    """The server's answer to ``imei``; after a ``00`` the server must also close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_listener(server).port)
    try:
        writer.write(encode_imei(imei))
        reply = await asyncio.wait_for(reader.readexactly(1), TIMEOUT)
        if reply == b"\x00":
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        return reply
    finally:
        writer.close()


def handshakes(result: str, device: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_teltonika_handshakes_total", {"result": result, "device": device}
    )
    return value or 0.0


def refreshes(result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "fleetgate_teltonika_allow_list_refreshes_total", {"result": result}
    )
    return value or 0.0


async def test_allow_all_labels_every_device_known(tmp_path: Path) -> None:
    server = await start(tmp_path)
    before = handshakes("accepted", "known")
    try:
        assert await handshake_reply(server, UNLISTED) == b"\x01"
    finally:
        await server.stop()
    assert handshakes("accepted", "known") == before + 1


async def test_static_list_strict_refuses_the_unknown_and_labels_both(tmp_path: Path) -> None:
    server = await start(tmp_path, allowed_imeis=[LISTED])
    known, refused = handshakes("accepted", "known"), handshakes("rejected", "unknown")
    try:
        assert await handshake_reply(server, LISTED) == b"\x01"
        assert await handshake_reply(server, UNLISTED) == b"\x00"
    finally:
        await server.stop()
    assert handshakes("accepted", "known") == known + 1
    assert handshakes("rejected", "unknown") == refused + 1


async def test_lax_mode_accepts_the_unknown_and_says_so(tmp_path: Path) -> None:
    server = await start(tmp_path, allowed_imeis=[LISTED], strict_device_auth=False)
    unknown = handshakes("accepted", "unknown")
    try:
        assert await handshake_reply(server, UNLISTED) == b"\x01"
    finally:
        await server.stop()
    assert handshakes("accepted", "unknown") == unknown + 1


# -- the Redis allow-list ------------------------------------------------------------------
@pytest.fixture
async def redis_key(shared_redis: int) -> AsyncIterator[tuple[Redis, str]]:
    client = Redis(host="127.0.0.1", port=shared_redis)
    key = f"fleetgate:test:allowed:{uuid.uuid4().hex}"
    try:
        yield client, key
    finally:
        await client.delete(key)
        await client.aclose()


def closed_port() -> int:
    """A loopback port nobody listens on (Redis "away")."""
    return free_port()


async def start_with_redis_list(tmp_path: Path, redis_port: int, key: str) -> Server:
    """A server whose allow-list is the Redis set ``key``, read every 0.1 s."""
    return await start(
        tmp_path,
        allowed_imeis_redis={
            "url": f"redis://127.0.0.1:{redis_port}/0",
            "key": key,
            "refresh_s": 0.1,
            "timeout_s": 1,
        },
    )


async def wait_for(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 - a list and a metric have no event
            await asyncio.sleep(0.02)


async def test_redis_list_strict_accepts_listed_refuses_unlisted_and_survives_an_outage(
    tmp_path: Path, redis_key: tuple[Redis, str], shared_redis: int
) -> None:
    client, key = redis_key
    await client.sadd(key, LISTED)
    server = await start_with_redis_list(tmp_path, shared_redis, key)
    try:
        authority = tcp_listener(server).gate.authority
        assert isinstance(authority, RedisAllowList)
        assert await handshake_reply(server, LISTED) == b"\x01"
        assert await handshake_reply(server, ALSO_LISTED) == b"\x00"
        assert await handshake_reply(server, UNLISTED) == b"\x00"

        # Periodic refresh: a device added to the set is let in without a restart.
        await client.sadd(key, ALSO_LISTED)
        await wait_for(lambda: authority.check(ALSO_LISTED) == "known")
        assert await handshake_reply(server, ALSO_LISTED) == b"\x01"

        # Redis goes away (the list now points at a port nobody listens on): the reads
        # fail, are counted, and the last list stays in force.
        failed = refreshes("failed")
        await authority.client.aclose()  # type: ignore[union-attr]
        authority.client = Redis(host="127.0.0.1", port=closed_port())
        await wait_for(lambda: refreshes("failed") >= failed + 2)
        assert authority.last_error is not None
        assert await handshake_reply(server, LISTED) == b"\x01"
        assert await handshake_reply(server, ALSO_LISTED) == b"\x01"
        assert await handshake_reply(server, UNLISTED) == b"\x00"
        assert tcp_listener(server).health()["authority"]["imeis"] == 2
    finally:
        await server.stop()


async def test_redis_unreachable_at_start_lets_no_one_in_until_a_read_succeeds(
    tmp_path: Path, redis_key: tuple[Redis, str], shared_redis: int
) -> None:
    client, key = redis_key
    await client.sadd(key, LISTED)
    server = await start_with_redis_list(tmp_path, closed_port(), key)
    try:
        authority = tcp_listener(server).gate.authority
        assert isinstance(authority, RedisAllowList)
        assert await handshake_reply(server, LISTED) == b"\x00"
        # Redis is back: the next read lets the listed device in.
        await authority.client.aclose()  # type: ignore[union-attr]
        authority.client = Redis(host="127.0.0.1", port=shared_redis)
        await wait_for(lambda: authority.check(LISTED) == "known")
        assert await handshake_reply(server, LISTED) == b"\x01"
    finally:
        await server.stop()


async def test_udp_applies_the_redis_list_too(
    tmp_path: Path, redis_key: tuple[Redis, str], shared_redis: int
) -> None:
    from tests.integration.teltonika.test_udp_listener import exchange
    from tests.teltonika_vectors import frame

    client, key = redis_key
    await client.sadd(key, LISTED)
    server = await start(
        tmp_path,
        allowed_imeis_redis={"url": f"redis://127.0.0.1:{shared_redis}/0", "key": key},
    )
    try:
        # doc-c8-udp-example comes from 352093086403655, not on the list.
        assert await exchange(server, frame("doc-c8-udp-example"), wait=0.5) is None
        await client.sadd(key, "352093086403655")
        udp = server.listener("teltonika-udp")
        assert udp is not None
        await udp.gate.authority.refresh()  # type: ignore[attr-defined]
        assert await exchange(server, frame("doc-c8-udp-example")) is not None
    finally:
        await server.stop()
