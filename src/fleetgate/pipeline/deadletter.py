"""Records a sink can never take, set aside with the reason instead of blocking the queue.

A sink that refuses one record for good (a value its backend cannot store, a message over
its size limit) must not hold back the records behind it, and the record must not vanish:
it is written as one JSON line to ``<data_dir>/deadletter/<sink>.jsonl`` (synced to disk),
counted in ``fleetgate_dead_letters_total{sink}`` and logged. The line holds the time, the
sink, the reason, the record's offset, its JSON form and its raw bytes (base64), enough to
replay it by hand once the cause is fixed.
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import orjson

from fleetgate.observability.redact import redact
from fleetgate.records import Record, format_rfc3339_ms, now_ms, record_dict


class DeadLetters:
    """Appends refused records to one file per sink (safe to call from worker threads)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    def path(self, sink: str) -> Path:
        return self.directory / f"{sink}.jsonl"

    def write(self, sink: str, records: list[Record], reason: str) -> None:
        """Append ``records`` with ``reason`` and sync; raises ``OSError`` if it cannot."""
        at = format_rfc3339_ms(now_ms())
        lines = b"".join(
            orjson.dumps(
                {
                    "time": at,
                    "sink": sink,
                    "reason": redact(reason),
                    "offset": record.offset,
                    "record": record_dict(record),
                    "raw": base64.b64encode(record.raw).decode() if record.raw else None,
                },
                default=str,
            )
            + b"\n"
            for record in records
        )
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path(sink), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                view = memoryview(lines)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
