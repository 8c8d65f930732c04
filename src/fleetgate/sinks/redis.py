"""``redis``: Tesla's Redis dispatcher (pub/sub channels) plus optional Redis Streams.

Library: ``redis.asyncio`` (redis-py). It is the maintained official client, speaks RESP to
standalone and cluster servers, and has pipelines, which is what batching needs here: one
round trip carries a whole batch and its replies are the confirmation.

What one record becomes (``<dest>`` = ``<namespace>_<topic>``, payload =
:func:`~fleetgate.forms.wire_payload`), in this order, per the reference (spec §11.2):

1. ``subscriber_set_prefix``: the sorted set ``<prefix>_<dest>_{<VIN>}`` holds subscriber
   channels scored by lease expiry (epoch seconds). Members scored below now are removed,
   the payload is PUBLISHed to every remaining member. The set is read once per batch (the
   reference reads it per record): a subscriber joining mid-batch sees the next batch.
2. ``publish_vin_topics``: PUBLISH to ``<dest>_{<VIN>}`` (braces = cluster hash tag).
3. ``streams`` (fleetgate addition): XADD to stream ``<dest>`` with ``MAXLEN ~
   stream_maxlen`` and fields ``payload``, the seven metadata keys (spec §9.2) and ``key``
   (the device id). Unlike pub/sub, a stream keeps records for consumers that were away.

Confirmation = every reply of the batch's pipeline arrived without error. A batch is sent as
pipelines of at most ``_CHUNK`` records, one at a time, so at most one chunk is in flight;
the runner never overlaps publishes, so per-device order is the batch order. Each chunk
must complete within ``publish_timeout``. Commands are packed here and sent as one write
(see :func:`_send_packed`); hiredis parses the replies.

Errors: connection refused/reset, timeouts, a server still loading, a read-only replica
and authentication failures are transient (the runner retries; the operator can fix auth
without losing records); any other error reply is permanent for the batch. The client
reconnects on the next command after a failure, so a server that was down at start is
picked up by the runner's retries.

``REDIS_PASSWORD`` (when non-empty) overrides ``redis.password``. ``cluster_mode`` or more
than one address uses the cluster client (not covered by the test suite: no cluster in CI).
``override_tls_server_name``: the TLS server name is already the host of each address.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from fleetgate.forms import wire_payloads
from fleetgate.records import Record
from fleetgate.settings import ConfigError, Section, TlsFiles
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

if TYPE_CHECKING:
    # redis-py is imported when the sink connects, not when the config is read.
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

_CHUNK = 1000
_NS_PER_S = 1_000_000_000


@functools.cache
def _transient_errors() -> tuple[type[Exception], ...]:
    """Error replies and failures that say "not now" rather than "never"."""
    from redis import exceptions as redis_errors

    return (
        redis_errors.ConnectionError,  # includes AuthenticationError, BusyLoadingError
        redis_errors.TimeoutError,
        redis_errors.ReadOnlyError,
        redis_errors.TryAgainError,
        redis_errors.ClusterDownError,
        redis_errors.MasterDownError,
        OSError,
        TimeoutError,
    )


class RedisPoolSettings(Section):
    pool_size: int | None = None
    min_idle_conns: int | None = None
    max_idle_conns: int | None = None
    max_active_conns: int | None = None
    read_timeout: int | None = None
    write_timeout: int | None = None
    pool_timeout: int | None = None
    conn_max_idle_time: int | None = None
    conn_max_lifetime: int | None = None


class RedisSettings(Section):
    """The ``redis`` section (reference keys, plus Redis Streams)."""

    addrs: list[str] = Field(default_factory=list)
    username: str = ""
    password: str = ""
    db: int = Field(0, ge=0)
    tls: TlsFiles | None = None
    override_tls_server_name: bool = False
    cluster_mode: bool = False
    publish_timeout: int = Field(5_000_000_000, ge=0)  # Go duration: nanoseconds
    publish_vin_topics: bool = False
    subscriber_set_prefix: str = ""
    pool: RedisPoolSettings | None = None
    # fleetgate additions: Redis Streams (XADD) next to the reference's pub/sub channels.
    streams: bool = False
    stream_maxlen: int = Field(100_000, ge=1)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, 6379
    return host.strip("[]"), int(port)


def _pack(args: tuple[bytes, ...]) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


async def _send_packed(client: Redis, commands: Sequence[tuple[bytes, ...]]) -> None:
    """Send all ``commands`` in one write and read every reply (a raw pipeline).

    redis-py's Pipeline packs each argument through several layers; packing here is
    about twice as fast and the replies are still read, and checked, one by one.
    """
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(b"".join(map(_pack, commands)), check_health=False)
        for _ in commands:
            await conn.read_response()  # raises on an error reply
    except BaseException:
        # Unread replies would be taken for the next command's: never reuse this socket.
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


class RedisSink(Sink):
    name: ClassVar[str] = "redis"
    Settings: ClassVar[type[Section]] = RedisSettings
    label: ClassVar[str | None] = "Redis"
    settings: RedisSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        s = self.settings
        if not s.addrs:
            raise ConfigError("redis.addrs: at least one address is required")
        if not (s.publish_vin_topics or s.subscriber_set_prefix or s.streams):
            raise ConfigError(
                "redis: set publish_vin_topics, subscriber_set_prefix or streams "
                "(otherwise nothing would be published)"
            )
        self.password = os.environ.get("REDIS_PASSWORD") or s.password or None
        self.timeout_s = s.publish_timeout / _NS_PER_S if s.publish_timeout else None
        self._client: Redis | RedisCluster | None = None

    def describe(self) -> str:
        return f"redis {','.join(self.settings.addrs)}"

    def _connect(self) -> Redis | RedisCluster:
        """Build the client (no I/O yet: connections open on the first command)."""
        from redis.asyncio import Redis
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        s = self.settings
        options: dict[str, Any] = {
            "username": s.username or None,
            "password": self.password,
            # publish_timeout bounds each whole operation (asyncio.timeout around it), not
            # each socket read: a per-read timer costs more than packing the command.
            "socket_connect_timeout": self.timeout_s,
            # The runner owns retries; a client retrying on its own would hide outages.
            "retry": Retry(NoBackoff(), 0),
        }
        if s.pool is not None and s.pool.pool_size:
            options["max_connections"] = s.pool.pool_size
        if s.tls is not None:
            options.update(
                ssl=True,
                ssl_ca_certs=s.tls.ca_file,
                ssl_certfile=s.tls.server_cert,
                ssl_keyfile=s.tls.server_key,
            )
        if s.cluster_mode or len(s.addrs) > 1:
            nodes = [ClusterNode(*_split_address(a)) for a in s.addrs]
            return RedisCluster(startup_nodes=nodes, **options)
        host, port = _split_address(s.addrs[0])
        return Redis(host=host, port=port, db=s.db, **options)

    @property
    def client(self) -> Redis | RedisCluster:
        if self._client is None:
            self._client = self._connect()
        return self._client

    async def start(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.ping()
        except _transient_errors() as exc:
            raise TransientSinkError(f"{self.describe()}: {exc}") from exc

    async def publish(self, batch: Sequence[Record]) -> None:
        from redis import exceptions as redis_errors

        try:
            for start in range(0, len(batch), _CHUNK):
                async with asyncio.timeout(self.timeout_s):
                    await self._publish_chunk(batch[start : start + _CHUNK])
        except _transient_errors() as exc:
            raise TransientSinkError(f"{self.describe()}: {exc}") from exc
        except redis_errors.RedisError as exc:
            raise PermanentSinkError(f"{self.describe()}: {exc}") from exc

    async def _publish_chunk(self, batch: Sequence[Record]) -> None:
        s = self.settings
        decoded = self.context.transmit_decoded
        subscribers = await self._live_subscribers(batch) if s.subscriber_set_prefix else {}
        maxlen = str(s.stream_maxlen).encode()
        commands: list[tuple[bytes, ...]] = []
        payloads = wire_payloads(batch, decoded)  # in one loop (records.record_jsons)
        for record, payload in zip(batch, payloads, strict=True):
            dest = self.destination(record.topic)
            vin_channel = f"{dest}_{{{record.device_id}}}"
            for channel in subscribers.get(vin_channel, ()):
                commands.append((b"PUBLISH", channel, payload))
            if s.publish_vin_topics:
                commands.append((b"PUBLISH", vin_channel.encode(), payload))
            if s.streams:
                fields = [dest.encode(), b"MAXLEN", b"~", maxlen, b"*", b"payload", payload]
                for key, value in self.headers(record).items():
                    fields += (key.encode(), value.encode())
                fields += (b"key", record.device_id.encode())
                commands.append((b"XADD", *fields))
        from redis.asyncio import Redis

        client = self.client
        if isinstance(client, Redis):
            await _send_packed(client, commands)
        else:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            await pipe.execute()

    async def _live_subscribers(self, batch: Sequence[Record]) -> dict[str, list[bytes]]:
        """VIN channel -> subscriber channels whose lease has not expired (one round trip)."""
        prefix = self.settings.subscriber_set_prefix
        channels = list(
            dict.fromkeys(f"{self.destination(r.topic)}_{{{r.device_id}}}" for r in batch)
        )
        now = int(time.time())
        pipe = self.client.pipeline(transaction=False)
        for channel in channels:
            key = f"{prefix}_{channel}"
            pipe.zremrangebyscore(key, "-inf", f"({now}")
            pipe.zrange(key, 0, -1)
        replies = await pipe.execute()
        return {channel: list(replies[2 * i + 1]) for i, channel in enumerate(channels)}

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
