"""Log and count TLS handshakes the server refuses (bad, missing or untrusted certificates).

asyncio and uvloop only report a failed server-side handshake in debug mode, so a vehicle
with a wrong certificate would vanish without a trace. The reference logs "http: TLS
handshake error from ..." for these. We watch the TLS alerts the server *sends*: every
refusal (``certificate_required``, ``unknown_ca``, ``bad_certificate``, ...) goes out as a
fatal alert, and OpenSSL reports each record through the context's message callback.

``SSLContext._msg_callback`` is CPython's hook for exactly this (it is how ``ssl``'s own
tests trace handshakes); it is private, so the hook is installed only where it exists. It
fires for every TLS record of every connection, so the callback is installed on the C
level descriptor: ``ssl.SSLContext``'s Python wrapper would turn each record's numbers
into enums first, which cost ~2 % of the Tesla listener's CPU.
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
from fleetgate.observability.ratelimit import LimitedLog

log = logging.getLogger("fleetgate.tesla")
# Anyone can open handshakes: a line for each would let them fill the log.
_REFUSED_LOG = LimitedLog(log, "tesla.tls_refused")

TLS_HANDSHAKE_ERRORS = Counter(
    "fleetgate_tls_handshake_errors_total",
    "TLS handshakes the server refused, by listener and alert sent",
    ["listener", "alert"],
    registry=REGISTRY,
)

_FATAL = 2
_CLOSE_NOTIFY = 0
_ALERT = 21  # TLS record content type
# Alert numbers -> names (certificate_required, unknown_ca, ...), from ssl's own table.
_ALERT_NAMES: dict[int, str] = {
    int(member): member.name.lower()
    for member in getattr(ssl, "_TLSAlertType", ())  # private; names fall back to numbers
}


def _suppressed() -> bool:
    return os.environ.get("SUPPRESS_TLS_HANDSHAKE_ERROR_LOGGING", "").lower() in ("1", "true")


def watch_refusals(context: ssl.SSLContext, listener: str) -> None:
    """Count (and log) every fatal alert ``context`` sends while acting as a server."""
    import _ssl

    descriptor = getattr(_ssl._SSLContext, "_msg_callback", None)
    if descriptor is None:  # pragma: no cover - other Python builds
        return

    def on_message(  # noqa: PLR0917 - the signature OpenSSL's callback is called with
        conn: Any, direction: str, version: int, content_type: int, msg_type: int, data: bytes
    ) -> None:
        if content_type != _ALERT or direction != "write" or len(data) < 2:
            return
        if data[0] != _FATAL or data[1] == _CLOSE_NOTIFY:
            return
        name = _ALERT_NAMES.get(msg_type, str(msg_type))
        TLS_HANDSHAKE_ERRORS.labels(listener=listener, alert=name).inc()
        if not _suppressed():
            _REFUSED_LOG.warning(
                "tls handshake refused: %s", name, extra=fields(listener=listener, alert=name)
            )

    descriptor.__set__(context, on_message)
