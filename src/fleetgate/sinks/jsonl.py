"""``jsonl``: append each record's JSON form as one line to a file.

Confirmation = the batch was written and flushed to the OS (and fsync'd with
``jsonl.fsync``). Lines are the records' one JSON form, so ``jq`` works on the file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

from fleetgate.records import Record, record_jsons
from fleetgate.settings import Section
from fleetgate.sinks.base import Sink, SinkContext


class JsonlSettings(Section):
    """The ``jsonl`` section: where to append, and whether to fsync each batch."""

    path: str | None = None  # default: <data_dir>/records.jsonl
    fsync: bool = False


class JsonlSink(Sink):
    name: ClassVar[str] = "jsonl"
    Settings: ClassVar[type[Section]] = JsonlSettings
    settings: JsonlSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        self.path = Path(self.settings.path or f"{context.data_dir}/records.jsonl")
        self.fsync = self.settings.fsync
        self._file: IO[bytes] | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")

    async def publish(self, batch: Sequence[Record]) -> None:
        data = b"".join([text + b"\n" for text in record_jsons(batch)])
        await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = self.path.open("ab")
        self._file.write(data)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def describe(self) -> str:
        return f"jsonl {self.path}"
