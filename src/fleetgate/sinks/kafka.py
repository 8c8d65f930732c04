"""``kafka``: produce records to Kafka, confirmed by the broker's delivery report.

Library: confluent-kafka (librdkafka). Tesla's reference uses librdkafka too, so its
``kafka`` config section, a raw librdkafka property map (``bootstrap.servers``, ...), is
passed through unchanged and means exactly what it means there. librdkafka also brings the
key-hash partitioner (one VIN always lands on one partition, so per-vehicle order holds),
compression, idempotence and its own batching, and it is far faster than a pure-Python
client.

Message shape (spec section 11): topic ``<namespace>_<topic>``, key = device id, headers =
the seven metadata keys, value = :func:`~fleetgate.forms.wire_payload`.

Confirmation: ``produce`` only queues a message inside librdkafka; its delivery report comes
back through ``producer.poll``, which the sink calls on the event loop itself (no thread):
every few produces while a batch is being produced, and from a timer while any publish
waits for reports (0.5 ms, backing off to 5 ms while nothing arrives; every 100 ms when no
publish waits, for librdkafka's error and log callbacks). Each message's report counts
down its batch; the last one resolves the batch's future. ``publish`` returns when every
report of the batch came back without error. It waits at most
``fleetgate.publish_timeout_ms`` (default 10 s, a fleetgate key removed before the map
reaches librdkafka), then raises :class:`TransientSinkError` so the runner can report the
broker down. Messages still inside librdkafka after such a timeout are not produced a
second time when the runner retries the batch: the retry waits for their original
delivery report instead, which keeps librdkafka's queue (and memory) bounded while the
broker is away.

Two batches in flight (``concurrent_publishes = 2``): the runner produces the next full
batch while the broker confirms the previous one, and confirms them in order (see
:mod:`fleetgate.pipeline.runner`). Produces never interleave (one publish produces at a
time), so librdkafka's queue, and with it each partition, gets the records in the
runner's order. The runner moves its cursor (acks, the spool) past a batch only once it
and every batch before it are confirmed. Delivery stays at-least-once: when a batch fails
while a later one was in flight, the runner publishes the failed batch again and then the
later one again, so the log can hold both batches' records twice (x1, x2, x1, x2 for one
device; the ``record_id`` header tells copies apart). Nothing is lost, and per device the
last copy of each record is in order. Keeping the first copy of each ``record_id``
also gives each device's records in order, unless the failed batch was partly delivered
(x2, x1, x2: x1 had failed).

One default differs from librdkafka's: ``linger.ms`` is 1 ms unless the section sets
``linger.ms`` or its alias ``queue.buffering.max.ms`` (see ``_DEFAULT_LINGER_MS``).

librdkafka's own log lines go through fleetgate's logger (confluent-kafka's ``logger``
setting), at most WARNING and rate-limited (:class:`_LibrdkafkaLog`): an unreachable broker
makes librdkafka repeat "connect failed" for every broker every few seconds, while the
runner's one line already says what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, NoReturn

from pydantic import ConfigDict, model_validator

from fleetgate.forms import wire_payloads
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.records import Record
from fleetgate.settings import Section
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

log = logging.getLogger("fleetgate.sinks.kafka")

PUBLISH_TIMEOUT_KEY = "fleetgate.publish_timeout_ms"
_DEFAULT_PUBLISH_TIMEOUT_S = 10.0
_CLOSE_FLUSH_S = 5.0
# Delivery wait while librdkafka reports every broker down.
_DOWN_WAIT_S = 0.5
# librdkafka's linger when the section sets none (librdkafka's own default is 5 ms). publish
# waits for every report of a batch (at most two batches are in flight), and the runner
# already lingers to gather that batch, so a long librdkafka linger is only paid again, once
# per batch: 5 ms per 1,000 records capped the sink near 100k records/s; 1 ms still lets a
# batch's messages share requests while it is being produced.
_DEFAULT_LINGER_MS = 1
_LINGER_KEYS = frozenset({"linger.ms", "queue.buffering.max.ms"})
# How long ``produce`` may wait for room in librdkafka's local queue before giving up.
_QUEUE_FULL_WAIT_S = 5.0
# poll(0) on the loop: while a publish waits for reports, first after 0.5 ms (uvloop runs
# that as "next iteration"), doubling up to 5 ms while polls find nothing; with no publish
# waiting, every 100 ms (librdkafka's error and log callbacks are served by poll too).
_POLL_MIN_S = 0.0005
_POLL_MAX_S = 0.005
_POLL_IDLE_S = 0.1
# While producing a batch, poll(0) after this many produces: serves the reports of the
# batch before it (two in flight) and frees librdkafka's queue, as a bare producer does.
_POLL_EVERY = 64

# Delivery errors no retry can fix: the message itself is unacceptable.
_PERMANENT_CODES = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "INVALID_MSG",
        "INVALID_MSG_SIZE",
        "INVALID_RECORD",
        "RECORD_LIST_TOO_LARGE",
        "TOPIC_AUTHORIZATION_FAILED",
        "TOPIC_EXCEPTION",
        "_MSG_SIZE_TOO_LARGE",
        "_INVALID_ARG",
    }
)


class _LibrdkafkaLog:
    """What confluent-kafka calls with librdkafka's log lines (from ``poll``)."""

    def __init__(self) -> None:
        self._limited = LimitedLog(log, "kafka.librdkafka", burst=5, interval_s=60.0)

    def log(self, level: int, msg: str, *args: Any) -> None:
        # Mostly a broker that cannot be reached, again: the runner logs the ERROR.
        self._limited.log(min(level, logging.WARNING), "librdkafka: " + msg, *args)


_LIBRDKAFKA_LOG = _LibrdkafkaLog()


class _Batch:
    """The delivery reports one ``publish`` waits for: a count, and a future resolved by
    the last report (every report arrives on the loop thread, from ``poll``)."""

    __slots__ = ("errors", "future", "remaining")

    def __init__(self, future: asyncio.Future[None], count: int) -> None:
        # Only ever given a result: errors are read from ``errors``, so a batch whose
        # publish timed out leaves no unretrieved exception behind.
        self.future = future
        self.remaining = count
        self.errors: list[Exception] = []

    def report(self, error: Exception | None) -> None:
        if error is not None:
            self.errors.append(error)
        self.remaining -= 1
        if not self.remaining and not self.future.done():
            self.future.set_result(None)


class _Message:
    """One produced record until its delivery report; librdkafka calls it with the report.

    A publish that gives up before every report came (timeout, cancel) *holds* its
    unreported messages: registers them in the sink's map by record identity, so a retry
    of the batch waits for the same report instead of producing the record a second time.
    Holding the record keeps its id() from being reused meanwhile. ``more`` is None until
    the message is held (the hot path: one batch waits, no map), then the list of the
    retries' batches waiting for it too. One object per message (no bound method, no
    list): it is allocated for every record on the hot path.
    """

    __slots__ = ("batch", "error", "more", "record", "reported", "sink")

    def __init__(self, sink: KafkaSink, record: Record, batch: _Batch) -> None:
        self.sink = sink
        self.record = record
        self.batch = batch
        self.more: list[_Batch] | None = None
        self.reported = False
        self.error: Exception | None = None

    def __call__(self, err: Any, _msg: Any) -> None:
        # librdkafka's delivery report, from poll() on the loop thread.
        if err is None:
            self.sink._all_brokers_down = False
            if self.more is None:
                self.reported = True
                batch = self.batch
                batch.remaining -= 1
                if not batch.remaining and not batch.future.done():
                    batch.future.set_result(None)
                return
            self._report(None)
        else:
            self._report(_classify(err, str(err)))

    def _report(self, error: Exception | None) -> None:
        """Count the outcome in every waiting batch; forget the message if it was held."""
        inflight = self.sink._inflight
        key = id(self.record)
        if inflight.get(key) is self:
            del inflight[key]
        self.reported = True
        self.error = error
        self.batch.report(error)
        for batch in self.more or ():
            batch.report(error)


_TIMESTAMP_HEADER: Final = ("timestamp", "0")
_VERSION_HEADER: Final = ("version", "0")


def kafka_headers(record: Record, record_id_prefix: str) -> list[tuple[str, str]]:
    """``Sink.headers(record)`` as the list of pairs confluent-kafka takes, in the same
    order (so the same header bytes), without the dict: built for every message.
    ``record_id_prefix`` is ``"<node_id>-"``."""
    meta = record.meta
    if meta:
        txid = meta.get("txid", "")
        client = meta.get("device_client_version", "")
    else:
        txid = client = ""
    headers = [
        ("vin", record.device_id),
        ("receivedat", str(record.received_at)),
        _TIMESTAMP_HEADER,
        ("txid", txid),
        ("txtype", record.topic),
        _VERSION_HEADER,
        ("device_client_version", client),
    ]
    offset = record.offset
    if offset:
        headers.append(("record_id", record_id_prefix + str(offset)))
    return headers


class KafkaSettings(Section):
    """The ``kafka`` section: a raw librdkafka property map, as in the reference.

    Keys are librdkafka's own (``bootstrap.servers``, ...), kept as given; JSON numbers become
    integers as the reference converts them. ``fleetgate.publish_timeout_ms`` is fleetgate's
    and never reaches librdkafka.
    """

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_ints(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        return {key: int(item) if isinstance(item, float) else item for key, item in value.items()}

    @property
    def properties(self) -> dict[str, Any]:
        """Every key of the section (librdkafka properties plus fleetgate's own)."""
        return dict(self.model_extra or {})


class KafkaSink(Sink):
    name: ClassVar[str] = "kafka"
    Settings: ClassVar[type[Section]] = KafkaSettings
    label: ClassVar[str | None] = "Kafka"
    # The next batch is produced while the broker confirms the previous one.
    concurrent_publishes: ClassVar[int] = 2
    settings: KafkaSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        properties = self.settings.properties
        timeout_ms = properties.pop(PUBLISH_TIMEOUT_KEY, None)
        self.publish_timeout_s = (
            float(timeout_ms) / 1000 if timeout_ms is not None else _DEFAULT_PUBLISH_TIMEOUT_S
        )
        self.properties: dict[str, Any] = properties
        self._producer: Any = None
        # Held messages (see _Message), by id() of their record.
        self._inflight: dict[int, _Message] = {}
        self._topics: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The poll timer (see _tick), publishes waiting for reports, the current delay.
        self._timer: asyncio.Handle | None = None
        self._waiting = 0
        self._delay = _POLL_IDLE_S
        # One publish produces at a time: two in flight must not interleave their records.
        self._producing = asyncio.Lock()
        # Set from librdkafka's error callback, cleared by the next successful delivery.
        self._all_brokers_down = False
        # Sink.headers as pairs (kafka_headers) unless a subclass makes its own headers.
        self._fast_headers = type(self).headers is Sink.headers
        self._record_id_prefix = f"{context.node_id}-"

    def describe(self) -> str:
        return f"kafka broker {self.properties.get('bootstrap.servers', '?')}"

    async def start(self) -> None:
        self._ensure_producer()

    def producer_config(self) -> dict[str, Any]:
        """The section's librdkafka properties, plus fleetgate's linger default."""
        if _LINGER_KEYS & self.properties.keys():
            return dict(self.properties)
        return {"linger.ms": _DEFAULT_LINGER_MS, **self.properties}

    def _ensure_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        from confluent_kafka import KafkaException, Producer

        loop = self._loop = asyncio.get_running_loop()
        try:
            producer = Producer(
                {**self.producer_config(), "error_cb": self._on_error, "logger": _LIBRDKAFKA_LOG}
            )
        except (KafkaException, ValueError, TypeError) as exc:
            # A bad property map never gets better by retrying.
            raise PermanentSinkError(f"kafka: invalid producer config: {exc}") from exc
        self._producer = producer
        self._delay = _POLL_IDLE_S
        self._timer = loop.call_later(_POLL_IDLE_S, self._tick)
        return producer

    def _on_error(self, err: Any) -> None:
        # From poll(). librdkafka reconnects by itself; this only tells publish() to fail
        # fast while nothing is reachable.
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._all_brokers_down = True
        log.debug("kafka: %s", err)

    def _tick(self) -> None:
        """The poll timer: serve delivery reports (and librdkafka's callbacks)."""
        self._timer = None
        producer = self._producer
        loop = self._loop
        if producer is None or loop is None:
            return
        served = 0
        try:
            served = producer.poll(0)
        except Exception:
            # A callback raised (poll passes that on): keep polling regardless, or every
            # publish from here on would wait out its timeout.
            log.exception("kafka: a librdkafka callback failed")
        if not self._waiting:
            delay = _POLL_IDLE_S
        elif served:
            delay = _POLL_MIN_S
        else:
            delay = min(self._delay * 2, _POLL_MAX_S)
        self._delay = delay
        self._timer = loop.call_later(delay, self._tick)

    def _hurry(self) -> None:
        """A publish now waits for reports: poll soon, whatever the idle timer says."""
        if self._delay <= _POLL_MAX_S:
            return  # polling at the waiting pace already
        timer, loop = self._timer, self._loop
        if timer is not None:
            timer.cancel()
        self._delay = _POLL_MIN_S
        self._timer = loop.call_later(_POLL_MIN_S, self._tick) if loop is not None else None

    async def publish(self, batch: Sequence[Record]) -> None:
        producer = self._ensure_producer()
        if not batch:
            return
        loop = asyncio.get_running_loop()
        waiting = _Batch(loop.create_future(), len(batch))
        # This publish's messages (to hold if it gives up), and held messages it waits for.
        produced: list[_Message] = []
        attached: list[_Message] = []
        self._waiting += 1
        try:
            async with self._producing:
                await self._produce_all(producer, batch, waiting, produced, attached)
            self._hurry()
            # While librdkafka says every broker is down, do not sit out the full timeout:
            # fail fast so the runner reports the outage (the messages stay queued inside
            # librdkafka and a retry waits for them again).
            timeout = _DOWN_WAIT_S if self._all_brokers_down else self.publish_timeout_s
            # asyncio.wait neither cancels the future on timeout nor on the runner
            # cancelling this publish.
            await asyncio.wait((waiting.future,), timeout=timeout)
        finally:
            self._waiting -= 1
            if waiting.remaining:
                self._hold(waiting, produced, attached)
        unreported, errors = waiting.remaining, waiting.errors
        if unreported:
            state = "all brokers down" if self._all_brokers_down else "no delivery report"
            raise TransientSinkError(
                f"{unreported} of {len(batch)} messages without delivery report "
                f"after {timeout:g}s ({state})"
            )
        if errors:
            if all(isinstance(error, PermanentSinkError) for error in errors):
                raise errors[0]
            first = next(e for e in errors if not isinstance(e, PermanentSinkError))
            raise TransientSinkError(f"{len(errors)} of {len(batch)} failed: {first}")

    async def _produce_all(
        self,
        producer: Any,
        batch: Sequence[Record],
        waiting: _Batch,
        produced: list[_Message],
        attached: list[_Message],
    ) -> None:
        """Hand every record of ``batch`` to librdkafka (or to a held message's report)."""
        inflight = self._inflight
        transmit_decoded = self.context.transmit_decoded
        topics = self._topics
        produce = producer.produce
        poll = producer.poll
        headers_of = self._kafka_headers
        keep = produced.append
        countdown = _POLL_EVERY
        # Every value made first, in one loop (fleetgate.records.record_jsons).
        values = wire_payloads(batch, transmit_decoded)
        for record, value in zip(batch, values, strict=True):
            if inflight:
                entry = inflight.get(id(record))
                if entry is not None and entry.record is record and self._attach(entry, waiting):
                    attached.append(entry)
                    continue
            topic = topics.get(record.topic)
            if topic is None:
                topic = topics[record.topic] = self.destination(record.topic)
            entry = _Message(self, record, waiting)
            key = record.device_id.encode()
            headers = headers_of(record)
            try:
                # Positional (topic, value, key, partition, on_delivery, -, timestamp,
                # headers): no keyword dict per call. -1: librdkafka's partitioner; 0: now.
                produce(topic, value, key, -1, entry, None, 0, headers)
            except BaseException as exc:
                if not isinstance(exc, BufferError):
                    _raise_classified(exc)
                await self._produce_when_room(producer, entry, (topic, value, key, headers))
            keep(entry)
            countdown -= 1
            if not countdown:
                countdown = _POLL_EVERY
                try:
                    poll(0)
                except Exception:  # a callback raised: as in _tick, the batch is unaffected
                    log.exception("kafka: a librdkafka callback failed")

    def _kafka_headers(self, record: Record) -> Any:
        """``self.headers(record)`` as confluent-kafka takes it (the same pairs in order)."""
        if self._fast_headers:
            return kafka_headers(record, self._record_id_prefix)
        return self.headers(record)

    def _attach(self, entry: _Message, waiting: _Batch) -> bool:
        """Make ``waiting`` count ``entry``'s report too (a retry of a record librdkafka
        still holds). If the report came meanwhile, count its outcome now."""
        if not entry.reported:
            if entry.more is None:
                entry.more = []
            entry.more.append(waiting)
            return True
        if entry.error is None:
            waiting.report(None)
            return True
        return False  # it failed: produce it again

    def _hold(self, waiting: _Batch, produced: list[_Message], attached: list[_Message]) -> None:
        """``waiting``'s publish gives up: keep its unreported messages findable for a retry
        (see _Message), and stop counting reports for it."""
        inflight = self._inflight
        for entry in produced:
            if not entry.reported:
                if entry.more is None:
                    entry.more = []
                inflight[id(entry.record)] = entry
        for entry in attached:
            if entry.more and waiting in entry.more:
                entry.more.remove(waiting)

    async def _produce_when_room(
        self, producer: Any, entry: _Message, message: tuple[str, bytes, bytes, Any]
    ) -> None:
        topic, value, key, headers = message
        deadline = time.monotonic() + _QUEUE_FULL_WAIT_S
        while True:
            # librdkafka's local queue is full (queue.buffering.max.messages): let
            # delivery reports drain it rather than growing memory.
            if time.monotonic() > deadline:
                raise TransientSinkError(
                    "kafka: local producer queue stays full; broker not keeping up"
                )
            producer.poll(0)
            await asyncio.sleep(_POLL_MAX_S)
            try:
                producer.produce(topic, value, key, -1, entry, None, 0, headers)
                return
            except BaseException as exc:
                if not isinstance(exc, BufferError):
                    _raise_classified(exc)

    async def close(self) -> None:
        producer = self._producer
        if producer is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # flush() on the loop, in slices: reports must reach their batches on this thread.
        deadline = time.monotonic() + _CLOSE_FLUSH_S
        while len(producer) and time.monotonic() < deadline:
            producer.poll(0)
            await asyncio.sleep(_POLL_MAX_S)
        producer.poll(0)
        remaining = len(producer)
        if remaining:
            log.warning("kafka: closed with %d messages not delivered", remaining)
        self._producer = None
        closed = TransientSinkError("kafka sink closed")
        for entry in list(self._inflight.values()):
            entry._report(closed)


def _raise_classified(exc: BaseException) -> NoReturn:
    """Raise what ``produce`` raised as the runner should see it."""
    from confluent_kafka import KafkaException

    if isinstance(exc, KafkaException):
        raise _classify(exc.args[0] if exc.args else None, str(exc)) from exc
    raise exc


def _classify(err: Any, text: str) -> Exception:
    """A librdkafka error → permanent (message unacceptable) or transient."""
    name = ""
    with contextlib.suppress(Exception):
        name = str(err.name())
    if name in _PERMANENT_CODES:
        return PermanentSinkError(f"kafka: {text}")
    return TransientSinkError(f"kafka: {text}")
