"""Log lines written before logging is configured, held and then written in its format.

Reading the configuration logs warnings (unknown keys, ignored settings) before the
configuration has said how to log (``log_level``, ``json_log_enable``). They are held
here and written once the handlers exist, so they come out like every later line: JSON
when ``json_log_enable`` is set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _Hold(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_log_records() -> Iterator[list[logging.LogRecord]]:
    """Hold every log record of the block instead of writing it (see :func:`replay`)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    hold = _Hold()
    root.handlers[:] = [hold]
    root.setLevel(logging.DEBUG)
    try:
        yield hold.records
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def replay(records: list[logging.LogRecord]) -> None:
    """Write held records through the root logger's handlers as they are now configured."""
    root = logging.getLogger()
    for record in records:
        if record.levelno < root.getEffectiveLevel():
            continue
        for handler in root.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
