"""The shared record log, read back: Kafka or NATS JetStream as the sinks wrote it.

In a scale-out layout every node writes its records to one log (the ``kafka`` or ``nats``
sink, keyed by device id). This package reads that log back for whoever needs every node's
records: ``fleetgate consume`` (print them, or feed a config's own sinks and store: a
dashboard-only or sink-only node) and a node's live stream (``api.stream.source``).

* :mod:`.wire` turns one message (value + headers) back into a Record;
* :mod:`.kafka` and :mod:`.nats` are the readers (:class:`.reader.LogReader`);
* :mod:`.dedup` drops records seen twice (same ``record_id``) within a window;
* :mod:`.follow` is the loop: read, de-duplicate, hand on, commit.
"""

from __future__ import annotations

from fleetgate.recordlog.dedup import RecordIdWindow
from fleetgate.recordlog.follow import LogFollower
from fleetgate.recordlog.opening import open_reader
from fleetgate.recordlog.reader import (
    LOG_KINDS,
    LogEntry,
    LogKind,
    LogReader,
    LogUnavailableError,
    ReadOptions,
)
from fleetgate.recordlog.wire import LogMessageError, record_from_message

__all__ = [
    "LOG_KINDS",
    "LogEntry",
    "LogFollower",
    "LogKind",
    "LogMessageError",
    "LogReader",
    "LogUnavailableError",
    "ReadOptions",
    "RecordIdWindow",
    "open_reader",
    "record_from_message",
]
