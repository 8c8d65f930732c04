"""``kafka``: produce records to Kafka, confirmed by the broker's delivery report.

Library: confluent-kafka (librdkafka). Tesla's reference uses librdkafka too, so its
``kafka`` config section, a raw librdkafka property map (``bootstrap.servers``, ...), is
passed through unchanged and means exactly what it means there. librdkafka also brings the
key-hash partitioner (one VIN always lands on one partition, so per-vehicle order holds),
compression, idempotence and its own batching, and it is far faster than a pure-Python
client.

Message shape (spec section 11): topic ``<namespace>_<topic>``, key = device id, headers =
the seven metadata keys, value = :func:`~fleetgate.forms.wire_payload`.

Confirmation: ``produce`` only queues a message inside librdkafka; a background thread
polls the producer, and each delivery report resolves an asyncio future on the event loop
(``call_soon_threadsafe``). ``publish`` returns when every report of the batch came back
without error. It waits at most ``fleetgate.publish_timeout_ms`` (default 10 s, a fleetgate
key removed before the map reaches librdkafka), then raises :class:`TransientSinkError` so
the runner can report the broker down. Messages still inside librdkafka after such a
timeout are not produced a second time when the runner retries the batch: the retry waits
for their original delivery report instead, which keeps librdkafka's queue (and memory)
bounded while the broker is away.

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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MethodType
from typing import Any, ClassVar, NoReturn

from pydantic import ConfigDict, model_validator

from fleetgate.forms import wire_payload
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
# waits for every report of a batch before the runner hands it the next one, and the runner
# already lingers to gather that batch, so a long librdkafka linger is only paid again, once
# per batch: 5 ms per 1,000 records capped the sink near 100k records/s; 1 ms still lets a
# batch's messages share requests while it is being produced.
_DEFAULT_LINGER_MS = 1
_LINGER_KEYS = frozenset({"linger.ms", "queue.buffering.max.ms"})
# How long ``produce`` may wait for room in librdkafka's local queue before giving up.
_QUEUE_FULL_WAIT_S = 5.0

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
    """What confluent-kafka calls with librdkafka's log lines (on the poll thread)."""

    def __init__(self) -> None:
        self._limited = LimitedLog(log, "kafka.librdkafka", burst=5, interval_s=60.0)

    def log(self, level: int, msg: str, *args: Any) -> None:
        # Mostly a broker that cannot be reached, again: the runner logs the ERROR.
        self._limited.log(min(level, logging.WARNING), "librdkafka: " + msg, *args)


_LIBRDKAFKA_LOG = _LibrdkafkaLog()


# What a batch knows of each of its messages (``_Batch.outcomes``).
_NO_REPORT = 0  # produced (or never produced: see ``_Batch.produced``), no report yet
_DELIVERED = 1
_FAILED = 2
_ELSEWHERE = 3  # not produced by this batch: it waits for an earlier batch's message


class _Batch:
    """The delivery reports one ``publish`` waits for, and what came of its messages.

    Counted under the sink's lock, mostly on the poll thread; the loop is woken once, when
    the last report arrives, instead of once per message (a wake-up per message cost more
    than producing it). Each message's delivery callback is a bound method of the batch's
    reporter with the message's index (``MethodType``: a fifth of a Python object's cost).
    """

    __slots__ = (
        "abandoned", "errors", "future", "loop", "outcomes", "produced", "records",
        "remaining", "unreported", "waiters",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, records: Sequence[Record]) -> None:
        self.loop = loop
        # Only ever given a result: errors are read from ``errors``, so a batch whose
        # publish timed out leaves no unretrieved exception behind.
        self.future: asyncio.Future[None] = loop.create_future()
        self.records = records
        # Reports this publish waits for: its own messages' and earlier ones it attached to.
        self.remaining = len(records)
        # Messages this batch produced that have no report yet.
        self.unreported = len(records)
        self.produced = len(records)  # the first ``produced`` records went to librdkafka
        self.outcomes = bytearray(len(records))
        self.errors: list[Exception] = []
        # Set when its publish returned before every report came: its unreported
        # messages are then ``held`` by the sink and retries may wait for them (waiters).
        self.abandoned = False
        self.waiters: dict[int, list[_Batch]] | None = None

    def count(self, error: Exception | None) -> bool:
        """Count one report (caller holds the lock); True when it was the last."""
        if error is not None:
            self.errors.append(error)
        self.remaining -= 1
        return self.remaining == 0

    def settle_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self.loop.call_soon_threadsafe(_settle, self.future)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reporter(sink: KafkaSink, batch: _Batch) -> Callable[[int, Any, Any], None]:
    """The delivery callback of ``batch``'s messages, bound to each message's index."""
    lock = sink._lock
    outcomes = batch.outcomes

    def report(index: int, err: Any, _msg: Any) -> None:
        # librdkafka's delivery report: on the poll thread (or in close's flush).
        if err is None:
            if sink._all_brokers_down:
                sink._all_brokers_down = False
            with lock:
                if not batch.abandoned:
                    # Delivered while its publish waits (every message, normally): no
                    # retry can be waiting for it, so only the counts change.
                    outcomes[index] = _DELIVERED
                    batch.unreported -= 1
                    batch.remaining -= 1
                    if batch.remaining:
                        return
                    finished = [batch]
                else:
                    finished = []
                    sink._outcome(batch, index, None, finished)
        else:
            error = _classify(err, str(err))
            finished = []
            with lock:
                sink._outcome(batch, index, error, finished)
        for done in finished:
            done.settle_threadsafe()

    return report


_TIMESTAMP_HEADER = ("timestamp", "0")
_VERSION_HEADER = ("version", "0")


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
    # The runner gives it one batch at a time. Producing the next batch while the broker
    # confirms this one (a runner with batches in flight) was tried and measured no faster
    # on 2 cores (0.39-0.43x the bare client against 0.46-0.50x, same runs): produce and
    # the delivery reports share the GIL. publish is still safe to run concurrently
    # (batches are produced in call order, _producing).
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
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        # Batches with messages inside librdkafka (failed by close if never reported).
        self._open: set[_Batch] = set()
        # The unreported messages of abandoned batches, by record identity: a retry of a
        # batch that timed out waits for the same report instead of producing the record
        # a second time (the batch holds the record, so its id() is not reused meanwhile).
        self._held: dict[int, tuple[_Batch, int]] = {}
        # Guards the batches' counts, _open and _held between the loop and the poll thread.
        self._lock = threading.Lock()
        self._topics: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Held while a publish produces: a publish waiting for room in librdkafka's queue
        # must not let the next batch's messages overtake its own.
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

        self._loop = asyncio.get_running_loop()
        try:
            producer = Producer(
                {**self.producer_config(), "error_cb": self._on_error, "logger": _LIBRDKAFKA_LOG}
            )
        except (KafkaException, ValueError, TypeError) as exc:
            # A bad property map never gets better by retrying.
            raise PermanentSinkError(f"kafka: invalid producer config: {exc}") from exc
        self._producer = producer
        self._stop.clear()
        self._poller = threading.Thread(
            target=self._poll_forever, args=(producer,), name="kafka-poll", daemon=True
        )
        self._poller.start()
        return producer

    def _on_error(self, err: Any) -> None:
        # Poll thread. librdkafka reconnects by itself; this only tells publish() to fail
        # fast while nothing is reachable.
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._all_brokers_down = True
        log.debug("kafka: %s", err)

    def _poll_forever(self, producer: Any) -> None:
        # Delivery reports are served by poll(); 100 ms keeps shutdown prompt.
        while not self._stop.is_set():
            producer.poll(0.1)

    async def publish(self, batch: Sequence[Record]) -> None:
        producer = self._ensure_producer()
        if not batch:
            return
        waiting = _Batch(asyncio.get_running_loop(), batch)
        with self._lock:
            self._open.add(waiting)
        try:
            async with self._producing:
                await self._produce_all(producer, batch, waiting)
            # While librdkafka says every broker is down, do not sit out the full timeout:
            # fail fast so the runner reports the outage (the messages stay queued inside
            # librdkafka and a retry waits for them again).
            timeout = _DOWN_WAIT_S if self._all_brokers_down else self.publish_timeout_s
            # asyncio.wait neither cancels the future on timeout nor on the runner
            # cancelling this publish.
            await asyncio.wait((waiting.future,), timeout=timeout)
        finally:
            with self._lock:
                unreported, errors = waiting.remaining, list(waiting.errors)
                self._leave(waiting)
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

    async def _produce_all(self, producer: Any, batch: Sequence[Record], waiting: _Batch) -> None:
        held = self._held
        decoded = self.context.transmit_decoded
        topics = self._topics
        produce = producer.produce
        bind = MethodType
        report = _reporter(self, waiting)
        headers_of = self._kafka_headers
        poll = producer.poll
        produced = 0
        try:
            for index, record in enumerate(batch):
                if not index & 127 and index:
                    # Serve the reports that came meanwhile here, as a bare producer's
                    # poll(0) does: the poll thread would take the GIL once per report.
                    poll(0)
                if held and self._attach(record, waiting, index):
                    produced = index + 1
                    continue
                topic = topics.get(record.topic)
                if topic is None:
                    topic = topics[record.topic] = self.destination(record.topic)
                value = wire_payload(record, decoded)
                key = record.device_id.encode()
                headers = headers_of(record)
                callback = bind(report, index)
                try:
                    # Positional (topic, value, key, partition, on_delivery, -, timestamp,
                    # headers): no keyword dict per call. -1 is librdkafka's partitioner.
                    produce(topic, value, key, -1, callback, None, 0, headers)
                except BufferError:
                    await self._produce_when_room(producer, (topic, value, key, headers), callback)
                except Exception as exc:
                    _raise_classified(exc)
                produced = index + 1
        finally:
            if produced < len(batch):
                with self._lock:
                    # Never produced: no report will come for these.
                    waiting.unreported -= len(batch) - produced
                    waiting.produced = produced

    def _kafka_headers(self, record: Record) -> Any:
        """``self.headers(record)`` as confluent-kafka takes it (the same pairs in order)."""
        if self._fast_headers:
            return kafka_headers(record, self._record_id_prefix)
        return self.headers(record)

    def _attach(self, record: Record, waiting: _Batch, index: int) -> bool:
        """Make ``waiting`` count the report of ``record``'s message if an abandoned batch
        still has it in librdkafka (a retry). False: produce it (again)."""
        found = self._held.get(id(record))
        if found is None:
            return False
        earlier, at = found
        with self._lock:
            if earlier.records[at] is not record:
                return False
            state = earlier.outcomes[at]
            if state == _FAILED:
                return False  # it failed: produce it again
            waiting.outcomes[index] = _ELSEWHERE
            waiting.unreported -= 1
            if state == _NO_REPORT:
                if earlier.waiters is None:
                    earlier.waiters = {}
                earlier.waiters.setdefault(at, []).append(waiting)
            elif waiting.count(None):  # delivered meanwhile
                _settle(waiting.future)
        return True

    def _outcome(
        self, batch: _Batch, index: int, error: Exception | None, finished: list[_Batch]
    ) -> None:
        """A report for ``batch``'s message ``index`` (caller holds the lock): counted in
        the batch and in every retry waiting for it; batches whose last report this was
        are added to ``finished``."""
        if batch.outcomes[index] != _NO_REPORT:
            return
        batch.outcomes[index] = _DELIVERED if error is None else _FAILED
        batch.unreported -= 1
        if batch.count(error):
            finished.append(batch)
        if batch.abandoned:
            key = id(batch.records[index])
            found = self._held.get(key)
            if found is not None and found[0] is batch and found[1] == index:
                del self._held[key]
            waiters = batch.waiters.pop(index, None) if batch.waiters else None
            for waiter in waiters or ():
                if waiter.count(error):
                    finished.append(waiter)
            if not batch.unreported:
                self._open.discard(batch)

    def _leave(self, batch: _Batch) -> None:
        """``batch``'s publish returns (caller holds the lock): messages still without a
        report stay held for a retry to wait for."""
        if not batch.unreported:
            self._open.discard(batch)
            return
        batch.abandoned = True
        records, outcomes, held = batch.records, batch.outcomes, self._held
        for index in range(batch.produced):
            if outcomes[index] == _NO_REPORT:
                held[id(records[index])] = (batch, index)

    async def _produce_when_room(
        self, producer: Any, message: tuple[str, bytes, bytes, Any], callback: Any
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
            await asyncio.sleep(0.05)
            try:
                producer.produce(topic, value, key, -1, callback, None, 0, headers)
                return
            except BufferError:
                continue
            except Exception as exc:
                _raise_classified(exc)

    async def close(self) -> None:
        producer = self._producer
        if producer is None:
            return
        self._stop.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 2.0)
        remaining = await asyncio.to_thread(producer.flush, _CLOSE_FLUSH_S)
        if remaining:
            log.warning("kafka: closed with %d messages not delivered", remaining)
        self._producer = None
        self._poller = None
        # Let the reports flush() delivered reach their publishes before the loop moves on.
        await asyncio.sleep(0)
        closed = TransientSinkError("kafka sink closed")
        finished: list[_Batch] = []
        with self._lock:
            for batch in list(self._open):
                for index in range(batch.produced):
                    self._outcome(batch, index, closed, finished)
            self._open.clear()
            self._held.clear()
        for batch in finished:
            _settle(batch.future)


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
