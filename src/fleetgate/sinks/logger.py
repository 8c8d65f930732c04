"""``logger``: one ``record_payload`` log line per record (Tesla's logger dispatcher).

The line carries ``vin``, ``metadata`` (the seven header keys) and ``data``: the source's
log form (:func:`fleetgate.forms.log_data`; Tesla's human-readable map, section 11.4 of its
spec), else the record JSON form.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fleetgate.forms import log_data
from fleetgate.records import Record, record_metadata
from fleetgate.settings import Section
from fleetgate.sinks.base import Sink, SinkContext

log = logging.getLogger("fleetgate.records")

class LoggerSettings(Section):
    """Tesla's ``logger`` section: ``verbose`` tags each V value with its type."""

    verbose: bool = False


class LoggerSink(Sink):
    name: ClassVar[str] = "logger"
    Settings: ClassVar[type[Section]] = LoggerSettings
    settings: LoggerSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        self.verbose = self.settings.verbose

    async def publish(self, batch: Sequence[Record]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        for record in batch:
            data = log_data(record, self.verbose)
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
