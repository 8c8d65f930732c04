"""Teltonika commands across worker processes and nodes, through Redis.

With ``teltonika.command_routing`` every process that takes trackers (each worker of each
node) runs a :class:`RoutedCommandCenter`. Commands and their states live in Redis, so any
node's API can take a command for any device, and a device gets its commands from
whichever node it is connected to, now or when it next connects::

    API on node A                      Redis                       node B (holds the device)
    submit ── id, state, queue ──────▶ <p>:cmd:<id>, <p>:queue:<imei>
           ── PUBLISH <p>:wake imei ─▶ ───────────────────────────▶ claims the queue (atomic),
                                                                    its session sends it
    waits  ◀── PUBLISH <p>:done id ─── <p>:cmd:<id> = answered ◀─── the device answers

Keys (``<p>`` = ``key_prefix``): ``<p>:next_id`` (ids, unique across nodes),
``<p>:cmd:<id>`` (the command's state as JSON, kept ``keep_s``), ``<p>:device:<imei>``
(the device's command ids, newest first), ``<p>:queue:<imei>`` (ids waiting for the
device), ``<p>:queued`` (every waiting id by creation time, for the TTL), ``<p>:claimed:<node>``
(ids a node took from a queue and has not finished), ``<p>:where:<imei>`` and
``<p>:held:<node>`` (which node holds a device; only used to answer at once that a device is
offline). Channels: ``<p>:wake`` (an IMEI has commands waiting) and ``<p>:done`` (a
command reached its final state).

What holds: a command is sent by one node at most once (the claim is one Lua script); a
device that leaves with commands claimed but not sent gives them back to the queue; a node
that crashes gets back, at its next start under the same ``node_id``, the commands it had
claimed (queued ones go back to the queue, sent ones are marked timed out, never sent
twice). A wake message missed while the subscription was down is made up when it comes
back (every waiting command is looked at once); a sweep every minute times out commands
queued longer than ``command_queue_ttl_s``.

Every Redis call of a process goes through one ordered worker: a command's states are
written in the order they happened, and a device's detach (giving commands back) is
written before its next attach on the same node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import orjson

from fleetgate.config import CommandRoutingConfig
from fleetgate.listeners.teltonika.command_journal import QUEUED, SENT, TIMED_OUT, Command
from fleetgate.listeners.teltonika.commands import (
    MAX_QUEUED_PER_DEVICE,
    CommandCenter,
    CommandLink,
    _check,
)
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.protocols.teltonika.model import CODEC_12
from fleetgate.runtime import CommandRefusedError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger("fleetgate.teltonika.commands")
_REDIS_FAILED = LimitedLog(log, "teltonika.commands.redis")

# How often queued commands are checked against command_queue_ttl_s.
SWEEP_INTERVAL_S: Final = 60.0
RESUBSCRIBE_MAX_S: Final = 5.0
# How often Redis writes that failed (an outage) are tried again, oldest first.
RETRY_INTERVAL_S: Final = 1.0
RETRY_KEPT: Final = 100_000
HISTORY_KEPT: Final = 1000

# The device's queue, taken whole by the node that holds the device: the ids leave the
# queue and the waiting set and join the node's claimed set in one step, so two nodes can
# never both send a command. Returns the commands' JSON (false for an expired one).
_CLAIM: Final = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
redis.call('DEL', KEYS[1])
local out = {}
for i, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('SADD', KEYS[3], id)
  out[i] = redis.call('GET', ARGV[1] .. id)
end
return out
"""
# The device left this node: forget where it was, if it is still here.
_LEFT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return 0
"""


def _redis_away(exc: BaseException) -> bool:
    """True for an outage (connection refused or lost, a timeout): worth another try."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError)


def _command_json(command: Command) -> bytes:
    return orjson.dumps(dataclasses.asdict(command))


def _command(raw: Any) -> Command | None:
    if not raw:
        return None
    try:
        return Command(**orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError):
        return None


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class RedisUnavailableError(CommandRefusedError):
    """Redis cannot be reached: commands cannot be routed now (503)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(
            "routing_unavailable",
            f"commands cannot be routed now: Redis: {error or type(error).__name__}",
            503,
        )


class RoutedCommandCenter(CommandCenter):
    """A :class:`CommandCenter` whose queues and states live in Redis (module docstring).

    The session's side (``attach``, ``take``, ``sent``, ``answered``...) is the same as
    the local center's: a session takes the commands this node claimed for its device.
    """

    def __init__(
        self,
        settings: Any,
        routing: CommandRoutingConfig,
        node_id: str,
    ) -> None:
        super().__init__(settings, "", alone=False)
        self.routing = routing
        self.node_id = node_id
        prefix = routing.key_prefix
        self._prefix = prefix
        self._wake_channel = f"{prefix}:wake"
        self._done_channel = f"{prefix}:done"
        self._claimed_key = f"{prefix}:claimed:{node_id}"
        self._held_key = f"{prefix}:held:{node_id}"
        self._queued_key = f"{prefix}:queued"
        self.client: Redis | None = None
        self._claim: Any = None
        self._left: Any = None
        self._jobs: asyncio.Queue[tuple[Callable[[], Awaitable[None]], asyncio.Future[None] | None]]
        self._jobs = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        # Session-side writes (presence, claims, states) that failed while Redis was away;
        # all are idempotent, so they run again in order once Redis answers.
        self._failed: deque[Callable[[], Awaitable[None]]] = deque(maxlen=RETRY_KEPT)

    def _key(self, kind: str, name: object) -> str:
        return f"{self._prefix}:{kind}:{name}"

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        from redis.asyncio import Redis

        timeout = self.routing.timeout_s
        self.client = Redis.from_url(
            self.routing.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._claim = self.client.register_script(_CLAIM)
        self._left = self.client.register_script(_LEFT)
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._work(), name="teltonika-command-redis")
        try:
            await self._recover()
        except Exception as exc:
            log.error(
                "teltonika commands: Redis could not be read at start; commands claimed "
                "before the stop stay claimed until the next start",
                extra=fields(url_prefix=self._prefix, error=f"{type(exc).__name__}: {exc}"),
            )
        self._listener = loop.create_task(self._listen(), name="teltonika-command-wakes")
        self._sweeper = loop.create_task(self._sweep_forever(), name="teltonika-command-sweep")

    async def stop(self) -> None:
        for task in (self._sweeper, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = self._listener = None
        # Claimed here and not sent: back to the shared queues for the devices' next node.
        for device_id in list(self._queues):
            self._give_back(device_id)
        for event in self._done.values():
            event.set()
        await self._drain_jobs()
        metrics.TELTONIKA_COMMAND_WRITES_WAITING.dec(len(self._failed))
        self._failed.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    # -- the one ordered Redis worker ------------------------------------------------------
    def _enqueue(
        self, job: Callable[[], Awaitable[None]], done: asyncio.Future[None] | None = None
    ) -> None:
        self._jobs.put_nowait((job, done))

    async def _call(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` on the worker after everything queued before it; its error raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(job, done)
        await done

    async def _drain_jobs(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call(_nothing), self.routing.timeout_s * 2)

    async def _work(self) -> None:
        while True:
            job, done = await self._jobs.get()
            try:
                await job()
            except Exception as exc:
                if done is not None and not done.done():
                    done.set_exception(exc)
                    continue
                if not _redis_away(exc):
                    # Not an outage: running it again would fail the same way and hold up
                    # every write queued behind it.
                    _REDIS_FAILED.error(
                        "teltonika commands: a Redis write failed and is dropped",
                        extra=fields(error=f"{type(exc).__name__}: {exc}"),
                    )
                    continue
                if len(self._failed) < RETRY_KEPT:  # when full, the oldest makes room
                    metrics.TELTONIKA_COMMAND_WRITES_WAITING.inc()
                self._failed.append(job)
                _REDIS_FAILED.warning(
                    "teltonika commands: a Redis write failed; it runs again once Redis answers",
                    extra=fields(error=f"{type(exc).__name__}: {exc}", waiting=len(self._failed)),
                )
            else:
                if done is not None and not done.done():
                    done.set_result(None)

    # -- the API's side ----------------------------------------------------------------------
    async def submit(
        self, device_id: str, command: str, *, codec: int = CODEC_12, wait_s: float | None = None
    ) -> dict[str, Any]:
        _check(device_id, command, codec)
        item = Command(0, device_id, command, codec, QUEUED, self.clock())
        held_by: list[str | None] = [None]

        async def queue() -> None:
            client = self._redis()
            queue_key = self._key("queue", device_id)
            waiting = await client.llen(queue_key)
            if waiting >= MAX_QUEUED_PER_DEVICE:
                raise CommandRefusedError(
                    "too_many_queued",
                    f"device {device_id} already has {waiting} commands queued",
                    429,
                )
            item.id = int(await client.incr(f"{self._prefix}:next_id"))
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(self._key("cmd", item.id), _command_json(item),
                         ex=int(self.routing.keep_s))
                pipe.lpush(self._key("device", device_id), item.id)
                pipe.ltrim(self._key("device", device_id), 0, HISTORY_KEPT - 1)
                pipe.rpush(queue_key, item.id)
                pipe.zadd(self._queued_key, {str(item.id): item.created_at})
                pipe.get(self._key("where", device_id))
                *_, where = await pipe.execute()
            held_by[0] = None if where is None else _text(where)
            metrics.labelled(metrics.TELTONIKA_COMMANDS, QUEUED).inc()
            metrics.labelled(metrics.TELTONIKA_COMMANDS_ROUTED, "queued").inc()
            done = self._done.setdefault(item.id, asyncio.Event())
            if device_id in self._links:
                await self._claim_for(device_id)
            elif held_by[0] is not None:
                await client.publish(self._wake_channel, device_id)
            else:
                done.set()  # offline everywhere: delivered on the device's next connection

        try:
            await self._call(queue)
        except CommandRefusedError:
            raise
        except Exception as exc:
            raise RedisUnavailableError(exc) from exc
        await self._wait_done(item.id, wait_s)
        view = await self.get(device_id, item.id)
        return view if view is not None else item.as_json()

    async def history(self, device_id: str, limit: int) -> list[dict[str, Any]]:
        client = self._redis()
        try:
            ids = await client.lrange(self._key("device", device_id), 0, limit - 1)
            found = await client.mget([self._key("cmd", _text(i)) for i in ids]) if ids else []
        except Exception as exc:
            raise RedisUnavailableError(exc) from exc
        return [item.as_json() for raw in found if (item := _command(raw)) is not None]

    async def get(self, device_id: str, command_id: int) -> dict[str, Any] | None:
        try:
            item = _command(await self._redis().get(self._key("cmd", command_id)))
        except Exception as exc:
            raise RedisUnavailableError(exc) from exc
        return item.as_json() if item is not None and item.device_id == device_id else None

    def _redis(self) -> Redis:
        assert self.client is not None, "start() first"
        return self.client

    # -- the session's side ------------------------------------------------------------------
    def attach(self, device_id: str, link: CommandLink) -> None:
        super().attach(device_id, link)
        self._enqueue(lambda: self._arrived(device_id))

    def detach(self, device_id: str, link: CommandLink) -> None:
        if self._links.get(device_id) is not link:
            return
        super().detach(device_id, link)
        self._give_back(device_id)
        self._enqueue(lambda: self._forget_presence(device_id))

    async def _arrived(self, device_id: str) -> None:
        client = self._redis()
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self._key("where", device_id), self.node_id)
            pipe.sadd(self._held_key, device_id)
            await pipe.execute()
        await self._claim_for(device_id)

    async def _forget_presence(self, device_id: str) -> None:
        if device_id in self._links:
            return  # it came back meanwhile
        await self._left(
            keys=[self._key("where", device_id), self._held_key], args=[self.node_id, device_id]
        )

    async def _claim_for(self, device_id: str) -> None:
        """Take the device's shared queue into this node's, if the device is here."""
        if device_id not in self._links:
            return
        found = await self._claim(
            keys=[self._key("queue", device_id), self._queued_key, self._claimed_key],
            args=[f"{self._prefix}:cmd:"],
        )
        items = [item for raw in found if (item := _command(raw)) is not None]
        if not items:
            return
        metrics.labelled(metrics.TELTONIKA_COMMANDS_ROUTED, "claimed").inc(len(items))
        queue = self._queues.setdefault(device_id, deque())
        queue.extend(items)
        link = self._links.get(device_id)
        if link is not None:
            link.wake()
        else:  # gone while the claim ran: back to the shared queue
            self._give_back(device_id)

    def _give_back(self, device_id: str) -> None:
        """Commands claimed here and not sent go back to the front of the shared queue."""
        queue = self._queues.pop(device_id, None)
        if not queue:
            return
        items = list(queue)
        metrics.labelled(metrics.TELTONIKA_COMMANDS_ROUTED, "requeued").inc(len(items))
        self._enqueue(lambda: self._requeue(device_id, items))

    async def _requeue(self, device_id: str, items: list[Command]) -> None:
        client = self._redis()
        ids = [str(item.id) for item in items]
        async with client.pipeline(transaction=True) as pipe:
            pipe.lpush(self._key("queue", device_id), *reversed(ids))
            pipe.zadd(self._queued_key, {str(item.id): item.created_at for item in items})
            pipe.srem(self._claimed_key, *ids)
            await pipe.execute()
        # Only a hint (a node that misses it claims on its next resubscribe): a failure
        # here must not send the requeue above round again.
        with contextlib.suppress(Exception):
            await client.publish(self._wake_channel, device_id)

    # -- states ------------------------------------------------------------------------------
    def _save(self, command: Command) -> None:
        snapshot = dataclasses.replace(command)
        self._enqueue(lambda: self._write(snapshot))

    async def _write(self, item: Command) -> None:
        client = self._redis()
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(self._key("cmd", item.id), _command_json(item), ex=int(self.routing.keep_s))
            if item.final:
                pipe.srem(self._claimed_key, item.id)
            await pipe.execute()
        if item.final:
            done = self._done.get(item.id)
            if done is not None:
                done.set()
            await client.publish(self._done_channel, item.id)

    def _finished(self, item: Command) -> None:
        """Waiters wake once the final state is in Redis (:meth:`_write`), not before."""

    # -- messages from other nodes -------------------------------------------------------------
    async def _listen(self) -> None:
        """Follow the wake and done channels; resubscribe after a lost connection."""
        delay = 0.1
        while True:
            pubsub: PubSub = self._redis().pubsub()
            try:
                await pubsub.subscribe(self._wake_channel, self._done_channel)
                # Whatever was published while we were not listening: writes that failed
                # run again, queued commands for devices here are claimed, and waiters whose
                # command finished meanwhile (their "done" message was lost) wake.
                self._enqueue(self._retry_failed)
                self._enqueue(self._claim_waiting)
                self._enqueue(self._wake_finished_waiters)
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_message(_text(message["channel"]), _text(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _REDIS_FAILED.warning(
                    "teltonika commands: lost the Redis subscription; retrying",
                    extra=fields(error=f"{type(exc).__name__}: {exc}"),
                )
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUBSCRIBE_MAX_S)

    def _on_message(self, channel: str, data: str) -> None:
        if channel == self._wake_channel:
            if data in self._links:
                self._enqueue(lambda: self._claim_for(data))
        elif channel == self._done_channel and data.isdigit():
            done = self._done.get(int(data))
            if done is not None:
                done.set()

    # -- start, sweep -------------------------------------------------------------------------
    async def _recover(self) -> None:
        """What this node had claimed or held before it stopped (or crashed)."""
        client = self._redis()
        ids = [_text(i) for i in await client.smembers(self._claimed_key)]
        found = await client.mget([self._key("cmd", i) for i in ids]) if ids else []
        by_device: dict[str, list[Command]] = {}
        lost = 0
        for command_id, raw in zip(ids, found, strict=True):
            item = _command(raw)
            if item is None or item.final:
                await client.srem(self._claimed_key, command_id)
            elif item.status == SENT:
                self._finish_lost(item)
                lost += 1
            else:
                by_device.setdefault(item.device_id, []).append(item)
        for device_id, items in by_device.items():
            items.sort(key=lambda item: item.id)
            await self._requeue(device_id, items)
        held = [_text(d) for d in await client.smembers(self._held_key)]
        for device_id in held:
            await self._forget_presence(device_id)
        if by_device or lost:
            log.info(
                "teltonika commands: %d claimed before the stop back in their queues; %d sent "
                "before the stop marked timed out",
                sum(len(items) for items in by_device.values()),
                lost,
            )

    def _finish_lost(self, item: Command) -> None:
        self.timed_out(item, "the server stopped before the device answered")

    async def _sweep_forever(self) -> None:
        since_sweep = 0.0
        while True:
            await asyncio.sleep(RETRY_INTERVAL_S)
            if self._failed:
                self._enqueue(self._retry_failed)
            since_sweep += RETRY_INTERVAL_S
            if since_sweep < SWEEP_INTERVAL_S:
                continue
            since_sweep = 0.0
            self.sweep()
            with contextlib.suppress(Exception):
                await self._call(self._expire_waiting)

    async def _retry_failed(self) -> None:
        """Run the writes that failed again, oldest first; stop at the first that fails."""
        while self._failed:
            job = self._failed[0]
            try:
                await job()
            except Exception as exc:
                if _redis_away(exc):  # still away: the next round tries again
                    _REDIS_FAILED.warning(
                        "teltonika commands: Redis still unavailable for earlier writes",
                        extra=fields(
                            error=f"{type(exc).__name__}: {exc}", waiting=len(self._failed)
                        ),
                    )
                    return
                _REDIS_FAILED.error(
                    "teltonika commands: a Redis write failed again and is dropped",
                    extra=fields(error=f"{type(exc).__name__}: {exc}"),
                )
            self._failed.popleft()
            metrics.TELTONIKA_COMMAND_WRITES_WAITING.dec()

    async def _wake_finished_waiters(self) -> None:
        ids = list(self._done)
        if not ids:
            return
        found = await self._redis().mget([self._key("cmd", i) for i in ids])
        for command_id, raw in zip(ids, found, strict=True):
            item = _command(raw)
            event = self._done.get(command_id)
            if item is not None and item.final and event is not None:
                event.set()

    async def _expire_waiting(self) -> None:
        """Time out the queued commands past their TTL (devices that stayed away)."""
        client = self._redis()
        oldest = self.clock() - int(self.settings.command_queue_ttl_s * 1000)
        ids = await client.zrangebyscore(self._queued_key, "-inf", f"({oldest}")
        for command_id in (_text(i) for i in ids):
            # Whoever removes it from the waiting set finishes it (once, on one node).
            if not await client.zrem(self._queued_key, command_id):
                continue
            item = _command(await client.get(self._key("cmd", command_id)))
            if item is not None:
                await client.lrem(self._key("queue", item.device_id), 0, command_id)
                self._finish(item, TIMED_OUT, detail=self._ttl_detail())

    async def _claim_waiting(self) -> None:
        """After (re)subscribing: claim what waits for devices held here (a wake message
        published while this node was not listening is lost), and expire the old."""
        await self._expire_waiting()
        client = self._redis()
        ids = [_text(i) for i in await client.zrange(self._queued_key, 0, -1)]
        if not ids or not self._links:
            return
        found = await client.mget([self._key("cmd", i) for i in ids])
        here = {
            item.device_id
            for raw in found
            if (item := _command(raw)) is not None and item.device_id in self._links
        }
        for device_id in here:
            await self._claim_for(device_id)


async def _nothing() -> None:
    return None
