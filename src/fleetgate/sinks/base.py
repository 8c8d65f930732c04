"""The one interface every sink implements, and the registry that finds sinks by name.

A sink is deliberately small: it connects (``start``), publishes one batch and returns only
once the backend has confirmed it (``publish``), and closes. Batching, bounded queues,
retries with backoff, metrics and health transitions live in one place, the pipeline's
:class:`~fleetgate.pipeline.runner.SinkRunner`, so every backend gets the same guarantees
without re-implementing them (Redpanda Connect's engine-owns-retries rule).

Errors tell the runner what to do:

* :class:`TransientSinkError` (or any ``OSError``/``TimeoutError``): the backend is
  unreachable or busy; the runner retries the same batch with backoff, marking the sink
  ``degraded`` then ``down``.
* :class:`PermanentSinkError`: this batch can never be accepted (too large, rejected by the
  backend); the runner counts it as failed and moves on.
"""

from __future__ import annotations

import enum
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fleetgate.records import Record


class Health(enum.StrEnum):
    """Sink health as ``/health`` reports it."""

    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


class SinkError(Exception):
    """Base of the errors a sink raises from ``start`` or ``publish``."""


class TransientSinkError(SinkError):
    """The backend could not take the batch now; retrying later may succeed."""


class PermanentSinkError(SinkError):
    """The backend will never take this batch; retrying is pointless."""


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What every sink constructor receives besides its own config section.

    ``namespace`` and ``transmit_decoded`` come from Tesla's top-level config keys and
    decide destination names (``<namespace>_<topic>``) and payload form.
    """

    namespace: str = ""
    transmit_decoded: bool = False
    data_dir: str = "data"
    extra: Mapping[str, Any] = field(default_factory=dict)


class Sink(ABC):
    """A backend records are published to.

    Subclasses set ``name`` and implement the three coroutines. ``publish`` must not return
    before the backend confirmed every record of the batch (delivery report, PUBACK,
    commit, ...): reliable ack builds on that promise.
    """

    name: ClassVar[str] = "sink"

    def __init__(self, config: Mapping[str, Any], context: SinkContext) -> None:
        self.config = config
        self.context = context

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to the backend. Raise :class:`SinkError` if it cannot be reached."""

    @abstractmethod
    async def publish(self, batch: Sequence[Record]) -> None:
        """Publish ``batch`` and return once the backend confirmed all of it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush what the sink holds and disconnect."""

    def describe(self) -> str:
        """Where this sink publishes, for log lines (``kafka 127.0.0.1:9092``)."""
        return self.name

    def destination(self, topic: str) -> str:
        """Tesla's naming rule for topics, streams and subjects: ``<namespace>_<topic>``."""
        return f"{self.context.namespace}_{topic}"


# name -> "module:Class". Modules are imported only when a config names the sink, so
# heavy client libraries (grpc, librdkafka, botocore) stay off the start-up path.
_BUILTIN_SINKS: dict[str, str] = {
    "logger": "fleetgate.sinks.logger:LoggerSink",
    "jsonl": "fleetgate.sinks.jsonl:JsonlSink",
    "sqlite": "fleetgate.sinks.sqlite:SqliteSink",
    "kafka": "fleetgate.sinks.kafka:KafkaSink",
    "kinesis": "fleetgate.sinks.kinesis:KinesisSink",
    "pubsub": "fleetgate.sinks.pubsub:PubSubSink",
    "mqtt": "fleetgate.sinks.mqtt:MqttSink",
    "zmq": "fleetgate.sinks.zmq:ZmqSink",
    "redis": "fleetgate.sinks.redis:RedisSink",
    "nats": "fleetgate.sinks.nats:NatsSink",
    "postgres": "fleetgate.sinks.postgres:PostgresSink",
}
_registered: dict[str, type[Sink]] = {}


def register_sink(cls: type[Sink]) -> type[Sink]:
    """Class decorator: make a sink available under ``cls.name`` (for plug-ins)."""
    _registered[cls.name] = cls
    return cls


def known_sinks() -> list[str]:
    """Every sink name a ``records`` list may use."""
    return sorted(set(_BUILTIN_SINKS) | set(_registered))


def sink_class(name: str) -> type[Sink]:
    """Resolve a sink name to its class, importing its module on first use."""
    if name in _registered:
        return _registered[name]
    target = _BUILTIN_SINKS.get(name)
    if target is None:
        raise KeyError(f"unknown sink {name!r}; known: {', '.join(known_sinks())}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise TypeError(f"{target} is not a Sink")
    _registered[name] = cls
    return cls
