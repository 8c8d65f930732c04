"""Log and count TLS handshakes the server refuses (bad, missing or untrusted certificates).

asyncio and uvloop only report a failed server-side handshake in debug mode, so a vehicle
with a wrong certificate would vanish without a trace. The reference logs "http: TLS
handshake error from ..." for these. We watch the TLS alerts the server *sends*: every
refusal (``certificate_required``, ``unknown_ca``, ``bad_certificate``, ...) goes out as a
fatal alert, and OpenSSL reports each record through the context's message callback.

``SSLContext._msg_callback`` is CPython's hook for exactly this (it is how ``ssl``'s own
tests trace handshakes); it is private, so the hook is installed only where it exists.
``SUPPRESS_TLS_HANDSHAKE_ERROR_LOGGING=true`` drops the log line (as in the reference);
the metric is always counted.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

from prometheus_client import Counter

from fleetgate.observability.logging import fields
from fleetgate.observability.metrics import REGISTRY

log = logging.getLogger("fleetgate.tesla")

TLS_HANDSHAKE_ERRORS = Counter(
    "fleetgate_tls_handshake_errors_total",
    "TLS handshakes the server refused, by listener and alert sent",
    ["listener", "alert"],
    registry=REGISTRY,
)

_FATAL = 2
_CLOSE_NOTIFY = 0


def _suppressed() -> bool:
    return os.environ.get("SUPPRESS_TLS_HANDSHAKE_ERROR_LOGGING", "").lower() in ("1", "true")


def watch_refusals(context: ssl.SSLContext, listener: str) -> None:
    """Count (and log) every fatal alert ``context`` sends while acting as a server."""
    if not hasattr(context, "_msg_callback"):  # pragma: no cover - other Python builds
        return
    alert_type = ssl._TLSContentType.ALERT  # type: ignore[attr-defined]

    def on_message(  # noqa: PLR0917 - the signature OpenSSL's callback is called with
        conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes
    ) -> None:
        if content_type != alert_type or direction != "write" or len(data) < 2:
            return
        if data[0] != _FATAL or data[1] == _CLOSE_NOTIFY:
            return
        name = getattr(msg_type, "name", str(msg_type)).lower()
        TLS_HANDSHAKE_ERRORS.labels(listener=listener, alert=name).inc()
        if not _suppressed():
            log.warning(
                "tls handshake refused: %s", name, extra=fields(listener=listener, alert=name)
            )

    context._msg_callback = on_message  # type: ignore[attr-defined]
