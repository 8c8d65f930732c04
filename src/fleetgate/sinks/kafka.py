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
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, NoReturn

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


class _Batch:
    """The delivery reports one ``publish`` waits for.

    Counted under the sink's lock, mostly on the poll thread; the loop is woken once, when
    the last report arrives, instead of once per message (a wake-up per message cost more
    than producing it).
    """

    __slots__ = ("errors", "future", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        # Only ever given a result: errors are read from ``errors``, so a batch whose
        # publish timed out leaves no unretrieved exception behind.
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = count
        self.errors: list[Exception] = []

    def report(self, error: Exception | None) -> bool:
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


class _Message:
    """One produced record until its delivery report; librdkafka calls it with the report.

    Kept (by record identity) while librdkafka holds the message: a retry of a batch that
    timed out waits for the same report instead of producing the record a second time.
    Holding the record keeps its id() from being reused meanwhile. One object per message
    (no bound method, no list): it is allocated for every record on the hot path.
    """

    __slots__ = ("batch", "error", "more", "record", "reported", "sink")

    def __init__(self, sink: KafkaSink, record: Record, batch: _Batch) -> None:
        self.sink = sink
        self.record = record
        self.batch = batch
        self.more: list[_Batch] | None = None  # publishes of retries waiting for it too
        self.reported = False
        self.error: Exception | None = None

    def __call__(self, err: Any, _msg: Any) -> None:
        # librdkafka's delivery report: on the poll thread (or in close's flush).
        sink = self.sink
        if err is None:
            sink._all_brokers_down = False
            with sink._lock:
                if self.more is None:
                    # Delivered, one publish waiting: _report's work inline (a third of
                    # its cost; every message takes this path on the poll thread).
                    inflight = sink._inflight
                    key = id(self.record)
                    if inflight.get(key) is self:
                        del inflight[key]
                    self.reported = True
                    batch = self.batch
                    batch.remaining -= 1
                    if batch.remaining:
                        return
                    finished = [batch]
                else:
                    finished = []
                    self._report(None, finished)
        else:
            error = _classify(err, str(err))
            finished = []
            with sink._lock:
                self._report(error, finished)
        for batch in finished:
            batch.settle_threadsafe()

    def _report(self, error: Exception | None, finished: list[_Batch]) -> None:
        """Count the outcome in every waiting batch (caller holds the lock); batches whose
        last report this was are added to ``finished``."""
        inflight = self.sink._inflight
        key = id(self.record)
        if inflight.get(key) is self:
            del inflight[key]
        self.reported = True
        self.error = error
        if self.batch.report(error):
            finished.append(self.batch)
        for batch in self.more or ():
            if batch.report(error):
                finished.append(batch)


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
        self._inflight: dict[int, _Message] = {}
        # Guards _inflight and the batches' counts between the loop and the poll thread.
        self._lock = threading.Lock()
        self._topics: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
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
        waiting = _Batch(asyncio.get_running_loop(), len(batch))
        inflight = self._inflight
        transmit_decoded = self.context.transmit_decoded
        topics = self._topics
        produce = producer.produce
        headers_of = self._kafka_headers
        for record in batch:
            entry = inflight.get(id(record))
            if entry is not None and entry.record is record and self._attach(entry, waiting):
                continue
            topic = topics.get(record.topic)
            if topic is None:
                topic = topics[record.topic] = self.destination(record.topic)
            entry = _Message(self, record, waiting)
            # Registered before produce: the report may arrive before produce returns.
            inflight[id(record)] = entry
            value = wire_payload(record, transmit_decoded)
            key = record.device_id.encode()
            headers = headers_of(record)
            try:
                # Positional (topic, value, key, partition, on_delivery, -, timestamp,
                # headers): no keyword dict per call. -1: librdkafka's partitioner; 0: now.
                produce(topic, value, key, -1, entry, None, 0, headers)
            except BaseException as exc:
                self._forget(entry)
                if not isinstance(exc, BufferError):
                    _raise_classified(exc)
                await self._produce_when_room(producer, entry, (topic, value, key, headers))
        # While librdkafka says every broker is down, do not sit out the full timeout:
        # fail fast so the runner reports the outage (the messages stay queued inside
        # librdkafka and a retry waits for them again).
        timeout = _DOWN_WAIT_S if self._all_brokers_down else self.publish_timeout_s
        # asyncio.wait neither cancels the future on timeout nor on the runner cancelling
        # this publish.
        await asyncio.wait((waiting.future,), timeout=timeout)
        with self._lock:
            unreported, errors = waiting.remaining, list(waiting.errors)
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

    def _kafka_headers(self, record: Record) -> Any:
        """``self.headers(record)`` as confluent-kafka takes it (the same pairs in order)."""
        if self._fast_headers:
            return kafka_headers(record, self._record_id_prefix)
        return self.headers(record)

    def _attach(self, entry: _Message, waiting: _Batch) -> bool:
        """Make ``waiting`` count ``entry``'s report too (a retry of a record librdkafka
        still holds). If the report came meanwhile, count its outcome now."""
        with self._lock:
            if not entry.reported:
                if entry.more is None:
                    entry.more = []
                entry.more.append(waiting)
                return True
            if entry.error is None:
                if waiting.report(None):
                    _settle(waiting.future)
                return True
        return False  # it failed: produce it again

    def _forget(self, entry: _Message) -> None:
        with self._lock:
            if self._inflight.get(id(entry.record)) is entry:
                del self._inflight[id(entry.record)]

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
            await asyncio.sleep(0.05)
            self._inflight[id(entry.record)] = entry
            try:
                producer.produce(topic, value, key, -1, entry, None, 0, headers)
                return
            except BaseException as exc:
                self._forget(entry)
                if not isinstance(exc, BufferError):
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
            for entry in list(self._inflight.values()):
                entry._report(closed, finished)
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
