"""Why a simulated device's connection failed, in words a user can act on.

The simulators count failed connections; these helpers turn each exception into one
reason (refused, timed out, a certificate the server does not trust...) so the CLI can
print what went wrong instead of a bare count.
"""

from __future__ import annotations

import socket
import ssl
from collections import Counter

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
)

# OpenSSL's names of the alerts a server sends when it refuses the client's certificate.
_CLIENT_CERT_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA that issued this "
    "certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused this certificate (bad certificate)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server says this certificate expired",
}


def _root(exc: BaseException) -> BaseException:
    """The TLS error behind a wrapper (with TLS 1.3 a refused client certificate surfaces
    as a failed HTTP read whose cause is the server's alert)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def describe(exc: BaseException, target: str) -> str:
    """One line saying why connecting to ``target`` failed."""
    exc = _root(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        hint = " (pass the CA of the server's certificate with --ca)"
        return f"TLS: the server certificate of {target} is not trusted: {detail}{hint}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _CLIENT_CERT_ALERTS:
            return f"TLS: {target} refused the client certificate: {_CLIENT_CERT_ALERTS[reason]}"
        return f"TLS handshake with {target} failed: {reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {target} (is the server running, on that port?)"
    if isinstance(exc, TimeoutError):
        return f"no answer from {target} in time (timeout)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {target}: {exc.strerror}"
    if isinstance(exc, InvalidMessage) and target.startswith("wss:"):
        # TLS 1.3 finishes the client's handshake before the server checks its certificate:
        # a refusal then reaches the client as a connection closed before any HTTP reply.
        return (
            f"{target} closed the connection before answering: it refused this client "
            "certificate (its CA is unknown there, or it carries no vehicle identity)"
        )
    if isinstance(exc, InvalidStatus):
        return f"{target} refused the WebSocket upgrade: HTTP {exc.response.status_code}"
    if isinstance(exc, InvalidHandshake):
        return f"WebSocket handshake with {target} failed: {exc}"
    if isinstance(exc, ConnectionClosed):
        if exc.rcvd is None:
            return f"{target} dropped the connection (no close frame; a refused VIN or TLS)"
        return f"{target} closed the connection: {exc.rcvd.code} {exc.rcvd.reason}".rstrip()
    if isinstance(exc, ConnectionResetError):
        return f"{target} reset the connection"
    if isinstance(exc, OSError):
        return f"connection to {target} failed: {exc.strerror or exc}"
    return f"connection to {target} failed: {exc!r}"


def report_lines(reasons: Counter[str], program: str) -> list[str]:
    """``<program>: N connection(s) failed: <reason>`` for each reason, most frequent first."""
    return [
        f"{program}: {count} connection(s) failed: {reason}"
        for reason, count in reasons.most_common()
    ]
