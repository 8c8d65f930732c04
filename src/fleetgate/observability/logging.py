"""Structured logging: text for people, JSON lines (``json_log_enable``) for machines.

Call sites pass evidence as fields, ``log.warning("crc mismatch", extra=fields(imei=...))``,
so both formats carry the same facts and tests can assert on them. Both formats pass the
finished line through :func:`~fleetgate.observability.redact.redact`: credentials a
configured URL carries never reach the log, whoever quoted them (us or a client library).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from fleetgate.observability.redact import redact
from fleetgate.records import format_rfc3339_ms

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` argument carrying structured fields for one log line."""
    return {"fields": values}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, then the line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": format_rfc3339_ms(int(record.created * 1000)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    """``time level logger: msg key=value ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            pairs = " ".join(f"{key}={_text(value)}" for key, value in extra.items())
            text = f"{text} {pairs}"
        return redact(text)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


def setup_logging(level: str = "info", json_lines: bool = False) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # Uvicorn's access log is per request; keep it out of the way unless debugging.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
