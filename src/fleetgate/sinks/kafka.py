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
from dataclasses import dataclass
from typing import Any, ClassVar

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


@dataclass(slots=True)
class _InFlight:
    # Holding the record keeps its id() from being reused while librdkafka has it.
    record: Record
    future: asyncio.Future[None]


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
        self._inflight: dict[int, _InFlight] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set from librdkafka's error callback, cleared by the next successful delivery.
        self._all_brokers_down = False

    def describe(self) -> str:
        return f"kafka broker {self.properties.get('bootstrap.servers', '?')}"

    async def start(self) -> None:
        self._ensure_producer()

    def _ensure_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        from confluent_kafka import KafkaException, Producer

        self._loop = asyncio.get_running_loop()
        try:
            producer = Producer(
                {**self.properties, "error_cb": self._on_error, "logger": _LIBRDKAFKA_LOG}
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
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        transmit_decoded = self.context.transmit_decoded
        for record in batch:
            waiting = self._inflight.get(id(record))
            if waiting is not None and waiting.record is record:
                futures.append(waiting.future)
                continue
            future: asyncio.Future[None] = loop.create_future()
            message = {
                "topic": self.destination(record.topic),
                "value": wire_payload(record, transmit_decoded),
                "key": record.device_id.encode(),
                "headers": list(self.headers(record).items()),
                "on_delivery": self._on_delivery(loop, record, future),
            }
            await self._produce(producer, message)
            self._inflight[id(record)] = _InFlight(record, future)
            futures.append(future)
        if not futures:
            return
        # While librdkafka says every broker is down, do not sit out the full timeout:
        # fail fast so the runner reports the outage (the messages stay queued inside
        # librdkafka and a retry waits for them again).
        timeout = _DOWN_WAIT_S if self._all_brokers_down else self.publish_timeout_s
        # asyncio.wait neither cancels the futures on timeout nor leaves a gathering
        # future behind when the runner cancels this publish.
        _done, unreported = await asyncio.wait(futures, timeout=timeout)
        if unreported:
            state = "all brokers down" if self._all_brokers_down else "no delivery report"
            raise TransientSinkError(
                f"{len(unreported)} of {len(futures)} messages without delivery report "
                f"after {timeout:g}s ({state})"
            )
        errors = [e for f in futures if (e := f.exception()) is not None]
        if errors:
            if all(isinstance(error, PermanentSinkError) for error in errors):
                raise errors[0]
            first = next(e for e in errors if not isinstance(e, PermanentSinkError))
            raise TransientSinkError(f"{len(errors)} of {len(futures)} failed: {first}")

    async def _produce(self, producer: Any, message: dict[str, Any]) -> None:
        deadline = time.monotonic() + _QUEUE_FULL_WAIT_S
        while True:
            try:
                producer.produce(**message)
                return
            except BufferError:
                # librdkafka's local queue is full (queue.buffering.max.messages):
                # let delivery reports drain it rather than growing memory.
                if time.monotonic() > deadline:
                    raise TransientSinkError(
                        "kafka: local producer queue stays full; broker not keeping up"
                    ) from None
                await asyncio.sleep(0.05)
            except Exception as exc:
                from confluent_kafka import KafkaException

                if isinstance(exc, KafkaException):
                    raise _classify(exc.args[0] if exc.args else None, str(exc)) from exc
                raise

    def _on_delivery(
        self, loop: asyncio.AbstractEventLoop, record: Record, future: asyncio.Future[None]
    ) -> Any:
        def report(err: Any, _msg: Any) -> None:
            # Runs on the poll thread (or in flush); hand the result to the loop.
            error = None if err is None else _classify(err, str(err))
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                loop.call_soon_threadsafe(self._resolve, record, future, error)

        return report

    def _resolve(
        self, record: Record, future: asyncio.Future[None], error: Exception | None
    ) -> None:
        current = self._inflight.get(id(record))
        if current is not None and current.future is future:
            del self._inflight[id(record)]
        if error is None:
            self._all_brokers_down = False
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # publish() may have timed out and never look at it

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
        # Let the reports flush() delivered reach their futures before the loop moves on.
        await asyncio.sleep(0)
        for entry in self._inflight.values():
            if not entry.future.done():
                entry.future.set_exception(TransientSinkError("kafka sink closed"))
                entry.future.exception()
        self._inflight.clear()


def _classify(err: Any, text: str) -> Exception:
    """A librdkafka error → permanent (message unacceptable) or transient."""
    name = ""
    with contextlib.suppress(Exception):
        name = str(err.name())
    if name in _PERMANENT_CODES:
        return PermanentSinkError(f"kafka: {text}")
    return TransientSinkError(f"kafka: {text}")
