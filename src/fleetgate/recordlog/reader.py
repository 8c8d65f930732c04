"""What every reader of the shared record log offers, and how one is opened from a config.

A reader hands out :class:`LogEntry` batches in the log's order (per device: Kafka keys
every record by its device id, so one device's records share a partition; NATS keeps one
stream's order). With a consumer ``group`` the log remembers how far the group got:
:meth:`LogReader.commit` marks everything read so far as handled, and a restarted reader
resumes after it (several readers of one group share the work). Without a group the reader
starts at the end of the log, or at its beginning with ``from_beginning``, and remembers
nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

from fleetgate.records import Record

LogKind = Literal["kafka", "nats"]
LOG_KINDS: tuple[LogKind, ...] = ("kafka", "nats")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One record read back, with its ``record_id`` header (``<node>-<offset>``) if any."""

    record: Record
    record_id: str | None


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """Where a reader starts and what it reads."""

    from_beginning: bool = False
    # A consumer group (Kafka group.id, JetStream durable consumer); None: read alone.
    group: str | None = None
    # fleetgate topics to read (position, V, ...); empty: every topic of the namespace.
    topics: tuple[str, ...] = ()


class LogReader(Protocol):
    """A reader of the shared record log (Kafka or NATS JetStream)."""

    @property
    def name(self) -> str:
        """Which log (``kafka``, ``nats``): the ``log`` label of its metrics."""

    async def start(self) -> None:
        """Connect; raise :class:`LogUnavailableError` when the log cannot be reached."""

    async def read(self, max_records: int, timeout_s: float) -> list[LogEntry]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""

    async def commit(self) -> None:
        """Everything read so far is handled (with a group: the log remembers it)."""

    async def close(self) -> None:
        """Disconnect (with a group: after a last commit)."""

    def describe(self) -> str:
        """Where the reader reads, for log lines (no credentials)."""


class LogUnavailableError(Exception):
    """The log cannot be read (broker unreachable, stream missing): one line."""


def topic_matcher(namespace: str, topics: tuple[str, ...]) -> re.Pattern[str]:
    """Log topic names (``<namespace>_<topic>``) a reader takes: ``topics``, or every one of
    the namespace, never the broker's own ``__`` topics. POSIX-compatible (librdkafka reads
    it for a group's subscription)."""
    prefix = re.escape(f"{namespace}_")
    if topics:
        return re.compile(f"{prefix}({'|'.join(re.escape(topic) for topic in topics)})")
    return re.compile(f"{prefix}[^_].*" if not namespace else f"{prefix}.+")
