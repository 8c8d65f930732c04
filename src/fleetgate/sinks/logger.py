"""``logger``: one ``record_payload`` log line per record (Tesla's logger dispatcher).

The line carries ``vin``, ``metadata`` (the seven header keys) and ``data``. Protocols may
register a log form of their own (Tesla's human-readable map, section 11.4 of its spec);
everything else logs the record JSON form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from fleetgate.records import Record, record_dict, record_metadata
from fleetgate.sinks.base import Sink, SinkContext

log = logging.getLogger("fleetgate.records")

# source -> (record, verbose) -> data for the log line
LogForm = Callable[[Record, bool], Any]
_log_forms: dict[str, LogForm] = {}


def register_log_form(source: str, form: LogForm) -> None:
    """Let a protocol package choose how its records look in the log."""
    _log_forms[source] = form


class LoggerSink(Sink):
    name: ClassVar[str] = "logger"

    def __init__(self, config: Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(config, context)
        self.verbose = bool(config.get("verbose", False))

    async def publish(self, batch: Sequence[Record]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        for record in batch:
            form = _log_forms.get(record.source)
            data = form(record, self.verbose) if form else record_dict(record)
            log.info(
                "record_payload",
                extra={
                    "fields": {
                        "vin": record.device_id,
                        "metadata": record_metadata(record),
                        "data": data,
                    }
                },
            )
