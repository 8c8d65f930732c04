"""Reading the record log back from Kafka (confluent-kafka, as the ``kafka`` sink writes).

Topics are ``<namespace>_<topic>``, one key per device (so one device's records stay on
one partition, in order), headers and value as :mod:`fleetgate.recordlog.wire` reads them.

Two ways to read:

* **alone** (no group): every partition of every matching topic is assigned directly, at
  its end or (``from_beginning``) its start; no group join, no committed offsets. The
  topic list is read again every :data:`TOPIC_REFRESH_S` seconds, and a topic that appears
  later is read from its start (all of it is new). This is what a dashboard node needs:
  every node's records, not a share of them.
* **in a group** (``group``): librdkafka's consumer group splits the partitions over the
  group's readers; offsets are stored once :meth:`KafkaLogReader.commit` says the records
  were handled, and committed by librdkafka in the background and at close, so a restart
  resumes after the last handled record (at least once).

The ``kafka`` section's librdkafka map is used as it is, without the producer-only keys.
Consumer calls block, so they run on a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.recordlog.reader import LogEntry, LogUnavailableError, ReadOptions, topic_matcher
from fleetgate.recordlog.wire import (
    RECORD_ID_HEADER,
    LogMessageError,
    header_map,
    record_from_message,
)
from fleetgate.sinks.kafka import PUBLISH_TIMEOUT_KEY

log = logging.getLogger("fleetgate.recordlog.kafka")
_UNREADABLE = LimitedLog(log, "recordlog.kafka.unreadable")
_ERRORS = LimitedLog(log, "recordlog.kafka.errors")


class _LibrdkafkaLog:
    """librdkafka's own lines (an unreachable broker: "connect failed" every few ms), at
    most WARNING and rate-limited; called on librdkafka's threads."""

    def __init__(self) -> None:
        self._limited = LimitedLog(log, "recordlog.kafka.librdkafka", burst=5, interval_s=60.0)

    def log(self, level: int, msg: str, *args: Any) -> None:
        self._limited.log(min(level, logging.WARNING), "librdkafka: " + msg, *args)


_LIBRDKAFKA_LOG = _LibrdkafkaLog()

TOPIC_REFRESH_S: Final = 2.0
_METADATA_TIMEOUT_S: Final = 5.0
# Keys of a producer's map that a consumer does not take (librdkafka warns about each).
_PRODUCER_ONLY: Final = frozenset(
    {
        PUBLISH_TIMEOUT_KEY,
        "acks",
        "request.required.acks",
        "linger.ms",
        "queue.buffering.max.ms",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "batch.num.messages",
        "batch.size",
        "compression.type",
        "compression.codec",
        "compression.level",
        "enable.idempotence",
        "message.send.max.retries",
        "retries",
        "delivery.timeout.ms",
        "message.timeout.ms",
        "request.timeout.ms",
        "partitioner",
        "transactional.id",
        "sticky.partitioning.linger.ms",
        "enable.gapless.guarantee",
        "dr_cb",
        "dr_msg_cb",
    }
)
# Group timing that a broker like Tansu needs to hand out partitions in seconds rather
# than half a minute (librdkafka's 45 s default); a configured value wins.
_GROUP_DEFAULTS: Final = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


def consumer_properties(
    properties: Mapping[str, Any], options: ReadOptions
) -> dict[str, Any]:
    """The librdkafka consumer map for ``options`` from a ``kafka`` section's map."""
    own = {key: value for key, value in properties.items() if key not in _PRODUCER_ONLY}
    own["auto.offset.reset"] = "earliest" if options.from_beginning else "latest"
    own["enable.partition.eof"] = False
    if options.group is None:
        # librdkafka wants a group id even for assigned partitions; nothing is committed.
        own["group.id"] = f"fleetgate-reader-{uuid.uuid4().hex}"
        own["enable.auto.commit"] = False
    else:
        own["group.id"] = options.group
        own["enable.auto.commit"] = True
        own["enable.auto.offset.store"] = False
        for key, value in _GROUP_DEFAULTS.items():
            own.setdefault(key, value)
    return own


class KafkaLogReader:
    """The log's topics of one namespace, read alone or in a consumer group."""

    @property
    def name(self) -> str:
        return "kafka"

    def __init__(
        self, properties: Mapping[str, Any], namespace: str, options: ReadOptions
    ) -> None:
        self.properties = consumer_properties(properties, options)
        self.namespace = namespace
        self.options = options
        self._prefix = f"{namespace}_"
        self._matcher = topic_matcher(namespace, options.topics)
        self._consumer: Any = None
        self._assigned: set[tuple[str, int]] = set()
        self._known_topics: set[str] | None = None
        self._refreshed = 0.0
        # Per partition, the offset after the last record handed out (for commit).
        self._positions: dict[tuple[str, int], int] = {}

    def describe(self) -> str:
        servers = self.properties.get("bootstrap.servers", "?")
        how = f"group {self.options.group}" if self.options.group else "alone"
        return f"kafka {servers} topics {self._prefix}* ({how})"

    async def start(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        try:
            self._consumer = Consumer(self.properties, logger=_LIBRDKAFKA_LOG)
        except (KafkaException, ValueError, TypeError) as exc:
            raise LogUnavailableError(f"kafka: {exc}") from exc
        if self.options.group is not None:
            pattern = self._matcher.pattern
            self._consumer.subscribe([f"^{pattern}$"])
            return
        await self._refresh_assignment()

    async def _refresh_assignment(self) -> None:
        """Assign the partitions of matching topics not assigned yet."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

        self._refreshed = time.monotonic()
        consumer = self._consumer
        try:
            metadata = await asyncio.to_thread(consumer.list_topics, None, _METADATA_TIMEOUT_S)
        except KafkaException as exc:
            if self._known_topics is None:
                raise LogUnavailableError(f"{self.describe()}: {exc}") from exc
            _ERRORS.warning("kafka: cannot list topics: %s", exc)
            return
        first_listing = self._known_topics is None
        names = {name for name in metadata.topics if self._matcher.fullmatch(name)}
        known = self._known_topics or set()
        new: list[Any] = []
        for name in sorted(names):
            # At the first listing: where the options say; a topic found later is all new.
            start = (
                OFFSET_BEGINNING
                if self.options.from_beginning or (not first_listing and name not in known)
                else OFFSET_END
            )
            for partition in sorted(metadata.topics[name].partitions):
                if (name, partition) not in self._assigned:
                    self._assigned.add((name, partition))
                    new.append(TopicPartition(name, partition, start))
        self._known_topics = known | names
        if new:
            consumer.incremental_assign(new)

    async def read(self, max_records: int, timeout_s: float) -> list[LogEntry]:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        if (
            self.options.group is None
            and time.monotonic() - self._refreshed >= TOPIC_REFRESH_S
        ):
            await self._refresh_assignment()
        messages = await asyncio.to_thread(consumer.consume, max_records, timeout_s)
        entries: list[LogEntry] = []
        for message in messages:
            error = message.error()
            if error is not None:
                _ERRORS.warning("kafka: %s", error)
                continue
            self._positions[(message.topic(), message.partition())] = message.offset() + 1
            entry = self._entry(message)
            if entry is not None:
                entries.append(entry)
        if entries:
            metrics.labelled(metrics.LOG_READ, "kafka", "record").inc(len(entries))
        return entries

    def _entry(self, message: Any) -> LogEntry | None:
        headers = header_map(message.headers())
        topic = message.topic()
        key = message.key()
        try:
            record = record_from_message(
                message.value() or b"",
                headers,
                topic[len(self._prefix):] if topic.startswith(self._prefix) else topic,
                key.decode("utf-8", "replace") if key else "",
            )
        except LogMessageError as exc:
            metrics.labelled(metrics.LOG_UNREADABLE, "kafka").inc()
            _UNREADABLE.warning(
                "kafka: skipped a message that is no record (%s)",
                exc,
                extra=fields(topic=topic, partition=message.partition(), offset=message.offset()),
            )
            return None
        return LogEntry(record, headers.get(RECORD_ID_HEADER))

    async def commit(self) -> None:
        if self.options.group is None or not self._positions:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in self._positions.items()
        ]
        self._positions.clear()
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            # A partition taken away by a rebalance: its new owner reads it again.
            _ERRORS.warning("kafka: offsets not stored: %s", exc)

    async def close(self) -> None:
        """Disconnect; offsets stored by :meth:`commit` are committed on the way out (what
        was read but not committed is read again by the group)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await asyncio.to_thread(consumer.close)
