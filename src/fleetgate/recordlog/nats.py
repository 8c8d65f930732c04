"""Reading the record log back from NATS JetStream (nats-py, as the ``nats`` sink writes).

The sink publishes each record on ``<prefix>.<topic>.<device_id>`` into stream
``nats.stream`` (both derived as :mod:`fleetgate.sinks.nats` says). The reader pulls from
a consumer on ``<prefix>.>``:

* **alone** (no group): an ephemeral consumer that acknowledges nothing, starting at the
  stream's first message (``from_beginning``) or its next new one; the server drops it a
  little while after the reader goes away, and a reader that lost its connection starts a
  new one after the last message it read;
* **in a group**: the durable consumer named ``group``; readers sharing it share the
  messages, each message is acknowledged once :meth:`NatsLogReader.commit` says it was
  handled, and what was not is delivered again (at least once).

One stream keeps the order messages were stored in, so one device's records arrive in
order. Records of topics other than ``topics`` (when given) are skipped client-side: the
server (2.9) filters one subject per consumer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, Final

from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.observability.redact import redact
from fleetgate.recordlog.reader import LogEntry, LogUnavailableError, ReadOptions
from fleetgate.recordlog.wire import (
    RECORD_ID_HEADER,
    LogMessageError,
    header_map,
    record_from_message,
)
from fleetgate.sinks.nats import NatsSettings

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("fleetgate.recordlog.nats")
_UNREADABLE = LimitedLog(log, "recordlog.nats.unreadable")
_CONNECTION = LimitedLog(log, "recordlog.nats.connection")

# How long start() waits for the stream to exist (the first record creates it).
STREAM_WAIT_S: Final = 30.0
_STREAM_POLL_S: Final = 0.5
# Messages a reader in a group may hold unacknowledged.
_MAX_ACK_PENDING: Final = 20_000
_ACK_WAIT_S: Final = 60.0
_RECONNECT_ATTEMPTS: Final = 3
_RECONNECT_WAIT_S: Final = 0.5


class NatsLogReader:
    """The sink's JetStream stream, read alone or through a durable consumer."""

    @property
    def name(self) -> str:
        return "nats"

    def __init__(self, settings: NatsSettings, namespace: str, options: ReadOptions) -> None:
        self.settings = settings
        self.options = options
        self.prefix = settings.subject_prefix or namespace or "fleetgate"
        self.stream = settings.stream or re.sub(r"[.*>\s]", "_", self.prefix)
        self.topics = frozenset(options.topics)
        self._nc: Client | None = None
        self._subscription: Any = None
        self._unacked: list[Any] = []
        # Alone: the stream sequence of the last message read (to resume after it).
        self._last_sequence: int | None = None

    def describe(self) -> str:
        servers = ",".join(redact(s).removeprefix("nats://") for s in self.settings.servers)
        how = f"group {self.options.group}" if self.options.group else "alone"
        return f"nats {servers} stream {self.stream} ({how})"

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> None:
        """Connect and subscribe; alone, after the last message read (after a reconnect)."""
        import nats
        import nats.errors
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        async def on_error(exc: Exception) -> None:
            _CONNECTION.warning("nats: %s", exc or type(exc).__name__)

        await self._drop()
        try:
            # A few quick attempts, then an error the caller reports; once connected the
            # client reconnects by itself for a while, and read() connects again after.
            self._nc = await nats.connect(
                servers=self.settings.servers,
                name="fleetgate-reader",
                connect_timeout=max(1, round(self.settings.connect_timeout_ms / 1000)),
                max_reconnect_attempts=_RECONNECT_ATTEMPTS,
                reconnect_time_wait=_RECONNECT_WAIT_S,
                error_cb=on_error,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise LogUnavailableError(f"{self.describe()}: {exc or type(exc).__name__}") from exc
        js = self._nc.jetstream()
        await self._wait_for_stream(js)
        grouped = self.options.group is not None
        if grouped:
            deliver: dict[str, Any] = {
                "deliver_policy": DeliverPolicy.ALL
                if self.options.from_beginning
                else DeliverPolicy.NEW
            }
        elif self._last_sequence is not None:
            deliver = {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": self._last_sequence + 1,
            }
        else:
            deliver = {
                "deliver_policy": DeliverPolicy.ALL
                if self.options.from_beginning
                else DeliverPolicy.NEW
            }
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT if grouped else AckPolicy.NONE,
            max_ack_pending=_MAX_ACK_PENDING if grouped else None,
            ack_wait=_ACK_WAIT_S if grouped else None,
            **deliver,
        )
        self._subscription = await js.pull_subscribe(
            f"{self.prefix}.>", durable=self.options.group, stream=self.stream, config=config
        )

    async def _wait_for_stream(self, js: Any) -> None:
        import nats.js.errors

        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_WAIT_S
        while True:
            try:
                await js.stream_info(self.stream)
                return
            except nats.js.errors.NotFoundError:
                if loop.time() > deadline:
                    raise LogUnavailableError(
                        f"{self.describe()}: no stream {self.stream} after "
                        f"{STREAM_WAIT_S:g} s (nothing written yet?)"
                    ) from None
                await asyncio.sleep(_STREAM_POLL_S)

    async def read(self, max_records: int, timeout_s: float) -> list[LogEntry]:
        import nats.errors

        if self._nc is None or self._nc.is_closed or self._subscription is None:
            await self._connect()  # the client gave up reconnecting: start again
        assert self._subscription is not None
        try:
            messages = await self._subscription.fetch(max_records, timeout=max(timeout_s, 0.01))
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        entries: list[LogEntry] = []
        for message in messages:
            if self.options.group is not None:
                self._unacked.append(message)
            else:
                # A consumer restored by a restarted server may start over from a state it
                # had not saved yet: what was read already is skipped, not handed on twice.
                sequence = message.metadata.sequence.stream
                if self._last_sequence is not None and sequence <= self._last_sequence:
                    continue
                self._last_sequence = sequence
            entry = self._entry(message)
            if entry is not None and (not self.topics or entry.record.topic in self.topics):
                entries.append(entry)
        if entries:
            metrics.labelled(metrics.LOG_READ, "nats", "record").inc(len(entries))
        return entries

    def _entry(self, message: Any) -> LogEntry | None:
        headers = header_map(message.headers)
        tokens = message.subject.split(".")
        # <prefix>.<topic>.<device>: the prefix may hold dots, topic and device never do.
        topic, key = (tokens[-2], tokens[-1]) if len(tokens) >= 3 else ("", "")
        try:
            record = record_from_message(message.data or b"", headers, topic, key)
        except LogMessageError as exc:
            metrics.labelled(metrics.LOG_UNREADABLE, "nats").inc()
            _UNREADABLE.warning(
                "nats: skipped a message that is no record (%s)",
                exc,
                extra=fields(subject=message.subject),
            )
            return None
        return LogEntry(record, headers.get(RECORD_ID_HEADER))

    async def commit(self) -> None:
        unacked, self._unacked = self._unacked, []
        for message in unacked:
            await message.ack()

    async def close(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        nc, self._nc = self._nc, None
        subscription, self._subscription = self._subscription, None
        if nc is None or nc.is_closed:
            return
        try:
            if subscription is not None:
                await subscription.unsubscribe()
            await asyncio.wait_for(nc.flush(), 5)  # acks sent by commit() reach the server
        except Exception as exc:
            log.debug("nats: flush on close failed: %s", exc)
        await nc.close()
