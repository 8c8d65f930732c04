"""The redis sink: conformance (streams mode) plus the reference's pub/sub channel rules."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from fleetgate.config import ConfigError
from fleetgate.forms import wire_payload
from fleetgate.records import record_metadata
from fleetgate.sinks.base import Sink, SinkContext, TransientSinkError
from fleetgate.sinks.redis import RedisSink
from fleetgate.sinks.registry import sink_class
from tests.integration.services import ManagedProcess, redis_server
from tests.integration.sinks.conformance import (
    Delivered,
    SinkConformance,
    SinkHarness,
    make_records,
    wire_record,
)

pytestmark = pytest.mark.integration

METADATA_KEYS = tuple(record_metadata(make_records(1)[0]))


class RedisHarness(SinkHarness):
    name = "redis"
    supports_headers = True
    supports_keys = True

    def __init__(self, server: ManagedProcess | None, port: int | None = None) -> None:
        super().__init__(server)
        assert server is not None or port is not None
        self.port = port if port is not None else server.port  # type: ignore[union-attr]
        self.prefix = f"fgt{self.token}_"

    def reader(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port)

    async def make_sink(self, ctx: SinkContext) -> Sink:
        config = {"addrs": [f"127.0.0.1:{self.port}"], "streams": True, "stream_maxlen": 10**6}
        config["publish_timeout"] = 2 * 10**9
        return RedisSink(config, ctx)

    async def read_back(self, expected: int, timeout: float) -> list[Delivered]:
        return await self.poll(self._read_all, expected, timeout)

    async def _read_all(self) -> list[Delivered]:
        client = self.reader()
        try:
            streams = sorted([k async for k in client.scan_iter(match=f"{self.prefix}*")])
            delivered: list[Delivered] = []
            for stream in streams:
                for _id, fields in await client.xrange(stream):
                    delivered.append(
                        Delivered(
                            destination=stream.decode(),
                            key=fields.get(b"key"),
                            headers={k: fields[k.encode()] for k in METADATA_KEYS},
                            payload=fields[b"payload"],
                        )
                    )
            return delivered
        except OSError:
            return []  # server restarting: nothing readable yet
        finally:
            await client.aclose()

    async def cleanup(self) -> None:
        client = self.reader()
        try:
            keys = [k async for k in client.scan_iter(match=f"{self.prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


class TestRedisConformance(SinkConformance):
    harness_class = RedisHarness

    @pytest.fixture
    def harness_factory(self, private_redis: ManagedProcess) -> Callable[[], SinkHarness]:
        return lambda: RedisHarness(private_redis)


# -- pub/sub channels, as the reference publishes them ----------------------------------------


@pytest.fixture
async def redis_client(private_redis: ManagedProcess) -> AsyncIterator[Redis]:
    if not private_redis.running:
        private_redis.start()
    client = Redis(host="127.0.0.1", port=private_redis.port)
    yield client
    await client.aclose()


async def _subscribe(client: Redis, *channels: str) -> Any:
    pubsub = client.pubsub()
    await pubsub.subscribe(*channels)
    for _ in channels:  # the subscribe confirmations: after them no message can be missed
        await pubsub.get_message(timeout=5)
    return pubsub


async def _messages(pubsub: Any, count: int) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    while len(got) < count:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None, f"only {len(got)} of {count} messages arrived"
        got.append((message["channel"].decode(), message["data"]))
    return got


async def test_vin_channel_gets_each_payload(
    redis_client: Redis, private_redis: ManagedProcess
) -> None:
    ctx = SinkContext(namespace="fgtvin")
    records = [wire_record("5YJ3E1EA7KF0000V1", seq) for seq in range(5)]
    channel = "fgtvin_V_{5YJ3E1EA7KF0000V1}"
    pubsub = await _subscribe(redis_client, channel)
    sink = RedisSink({"addrs": [private_redis.address], "publish_vin_topics": True}, ctx)
    try:
        await sink.publish(records)
        got = await _messages(pubsub, 5)
    finally:
        await sink.close()
        await pubsub.aclose()
    assert got == [(channel, wire_payload(r)) for r in records]


async def test_subscriber_set_fans_out_to_live_leases_first(
    redis_client: Redis, private_redis: ManagedProcess
) -> None:
    ctx = SinkContext(namespace="fgtsub")
    vin = "5YJ3E1EA7KF0000S1"
    vin_channel = f"fgtsub_V_{{{vin}}}"
    lease_set = f"subs_{vin_channel}"
    now = int(time.time())
    await redis_client.zadd(lease_set, {"live-a": now + 60, "expired": now - 5})
    pubsub = await _subscribe(redis_client, "live-a", "expired", vin_channel)
    config = {
        "addrs": [private_redis.address],
        "publish_vin_topics": True,
        "subscriber_set_prefix": "subs",
    }
    sink = RedisSink(config, ctx)
    record = wire_record(vin, 1)
    try:
        await sink.publish([record])
        got = await _messages(pubsub, 2)
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
        members = await redis_client.zrange(lease_set, 0, -1)
    finally:
        await sink.close()
        await pubsub.aclose()
        await redis_client.delete(lease_set)
    # Subscriber channels before the VIN channel; the expired lease got nothing and is gone.
    assert got == [("live-a", record.raw), (vin_channel, record.raw)]
    assert members == [b"live-a"]


def test_config_needs_something_to_publish() -> None:
    with pytest.raises(ConfigError, match="publish_vin_topics"):
        RedisSink({"addrs": ["127.0.0.1:1"]}, SinkContext())
    with pytest.raises(ConfigError, match="addrs"):
        RedisSink({"streams": True}, SinkContext())


def test_registered_under_its_name() -> None:
    assert sink_class("redis") is RedisSink


async def test_redis_password_env_overrides_config(
    services_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_server(services_dir, durable=False, password="s3cret")
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"cannot start redis: {exc}")
    try:
        config = {"addrs": [server.address], "streams": True, "password": "wrong"}
        wrong = RedisSink(config, SinkContext(namespace="pw"))
        with pytest.raises(TransientSinkError):
            await wrong.start()
        await wrong.close()
        monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
        sink = RedisSink(config, SinkContext(namespace="pw"))
        await sink.start()
        await sink.publish(make_records(3))
        await sink.close()
        client = Redis(host="127.0.0.1", port=server.port, password="s3cret")
        assert (
            await client.xlen("pw_avl") + await client.xlen("pw_can") + await client.xlen("pw_V")
            == 3
        )
        await client.aclose()
    finally:
        server.destroy()


async def test_shared_redis_streams(shared_redis: int) -> None:
    """One quick round trip against the always-running server (unique names, cleaned up)."""
    harness = RedisHarness(None, shared_redis)
    ctx = SinkContext(namespace=f"fgt{harness.token}")
    records = make_records(30)
    sink = await harness.make_sink(ctx)
    try:
        await sink.start()
        await sink.publish(records)
        delivered = await harness.read_back(len(records), 5)
    finally:
        await sink.close()
        await harness.cleanup()
    assert sorted(d.payload for d in delivered) == sorted(wire_payload(r) for r in records)
