"""The one interface every sink implements.

A sink is deliberately small: it connects (``start``), publishes one batch and returns only
once the backend has confirmed it (``publish``), and closes. It describes itself too: its
``name`` (what ``records`` lists), the ``Settings`` model of its config section and the
reference's ``label`` for a missing section (see :mod:`fleetgate.sinks.registry`).

Batching, bounded queues, retries with backoff, metrics and health transitions live in one
place, the pipeline's :class:`~fleetgate.pipeline.runner.SinkRunner`, so every backend gets
the same guarantees without re-implementing them (Redpanda Connect's engine-owns-retries rule).

Errors tell the runner what to do:

* :class:`TransientSinkError` (or any ``OSError``/``TimeoutError``): the backend is
  unreachable or busy; the runner retries the same batch with backoff, marking the sink
  ``degraded`` then ``down``.
* :class:`PermanentSinkError`, or any other exception (a bug, a value the backend's client
  cannot encode): retrying the same records cannot help; the runner does not retry them.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from fleetgate.records import Record, record_metadata
from fleetgate.settings import Section, validate_section


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
    # This server's name in record ids (``<node_id>-<offset>``); with workers, per worker.
    node_id: str = ""


class NoSettings(Section):
    """Settings of a sink that has no config section."""


class Sink(ABC):
    """A backend records are published to.

    Subclasses set ``name``, ``Settings`` (the model of their config section) and, when a
    ``records`` list may only name them once their section exists, ``label`` (the
    reference's name in "expected <label> to be configured"); they implement ``publish``
    and usually ``start``/``close``. ``publish`` must not return before the backend
    confirmed every record of the batch (delivery report, PUBACK, commit, ...): reliable
    ack builds on that promise.
    """

    name: ClassVar[str] = "sink"
    Settings: ClassVar[type[Section]] = NoSettings
    label: ClassVar[str | None] = None
    # How many batches the runner may have in ``publish`` at once. 1: the next batch goes
    # once the previous one is confirmed. More: the runner starts the next *full* batch
    # while earlier ones wait for their confirmation (a sink whose backend confirms
    # asynchronously keeps its connection busy), confirms them strictly in order, and if
    # one fails publishes every batch that was in flight behind it again after it
    # (at-least-once: duplicates are possible, loss and a lasting reorder are not). Only
    # for a sink whose concurrent publishes are safe and keep their submission order.
    concurrent_publishes: ClassVar[int] = 1

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        # A mapping (tests, plug-ins) is validated like the config file's section.
        self.settings = validate_section(self.Settings, settings, self.name)
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

    def committed_offset(self) -> int | None:
        """The ledger offset this sink committed together with its data, if it keeps one
        (the store does); the pipeline resumes after it. None: use the spool's cursor."""
        return None

    def synced_offset(self) -> int | None:
        """The highest ledger offset whose confirmation survives a power loss, for a sink
        whose confirmation alone does not (the store); the spool keeps every record above it.
        None: confirmed means durable."""
        return None

    def headers(self, record: Record) -> dict[str, str]:
        """Tesla's seven metadata keys, plus ``record_id`` (``<node>-<offset>``) once the
        pipeline gave the record its offset: consumers de-duplicate what a replay after a
        restart delivers twice."""
        headers = record_metadata(record)
        if record.offset:
            headers["record_id"] = f"{self.context.node_id}-{record.offset}"
        return headers

    def destination(self, topic: str) -> str:
        """Tesla's naming rule for topics, streams and subjects: ``<namespace>_<topic>``."""
        return f"{self.context.namespace}_{topic}"
