"""Server-side TLS over a plain transport: one small object per vehicle, no read buffer.

The Tesla listener used the event loop's TLS (``connect_accepted_socket(ssl=...)``). uvloop's
TLS protocol allocates a 256 KiB receive buffer per connection, touches its first pages
with the handshake, and keeps the decoded peer certificate as a dict (``peercert``): about
9 KiB of resident memory per idle vehicle beyond what OpenSSL itself holds (measured at
2,000 connections; asyncio's own TLS protocol zero-fills its 256 KiB buffer, ~290 KiB).

:class:`TlsLayer` is the TCP transport's protocol and, after the handshake, the
application's transport. OpenSSL runs over memory BIOs (:meth:`ssl.SSLContext.wrap_bio`,
the same context, verification and callbacks); ciphertext arrives in the plain TCP
transport's reads (uvloop reads into one buffer shared by the loop) and plaintext is read
into a module-wide buffer, copied out only for what arrived.

It does what uvloop's ``SSLProtocol`` does at each step, so nothing changes on the wire:

* a failed handshake aborts the TCP connection (the alert OpenSSL queued is not sent; it is
  counted by :mod:`fleetgate.listeners.tesla.tls_alerts` all the same);
* a TCP end of stream without ``close_notify`` closes the connection, the application gets
  ``connection_lost`` (not ``eof_received``); a ``close_notify`` gives it ``eof_received``
  and the layer answers with its own and closes;
* ``close()`` writes what is queued, sends ``close_notify``, waits for the peer's (at most
  ``SHUTDOWN_TIMEOUT_S``) and closes the socket; ``abort()`` drops it at once;
* write flow control is the TCP transport's (its buffer holds the ciphertext); an
  application paused before its ``close()`` is resumed all the same once the buffer drains
  (its writers would otherwise wait for the peer's ``close_notify``);
* ``abort()`` or ``close()`` during the handshake fails ``handshake`` with
  ``ConnectionAbortedError``;
* an error in an established session (a client's renegotiation, which OpenSSL refuses; a
  record that does not decrypt) drops the connection, the application's ``connection_lost``
  gets the error, and it is counted in ``fleetgate_tls_session_errors_total{reason}`` and
  logged (rate-limited).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog

log = logging.getLogger("fleetgate.tesla")
# A peer can end sessions this way as often as it connects: a line each would fill the log.
_SESSION_ERROR_LOG = LimitedLog(log, "tesla.tls_session_error")
LISTENER = "tesla"

SHUTDOWN_TIMEOUT_S = 30.0  # uvloop's and asyncio's SSL_SHUTDOWN_TIMEOUT
# A read returns one TLS record's plaintext (at most 16 KiB) as bytes sized to it.
_READ_SIZE = 64 * 1024
# Ciphertext goes into OpenSSL at most this much at a time (about one TLS record).
_BIO_SLICE = 16 * 1024
# ... and during the handshake at most this much: see data_received.
_HANDSHAKE_SLICE = 256

_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)
_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TlsLayer(asyncio.Protocol, asyncio.Transport):
    """TLS server side of one TCP connection; the transport of ``app`` once shaken hands.

    ``handshake`` resolves when the handshake is done (``app.connection_made`` has been
    called) or fails with the handshake's error (the connection is then aborted).
    """

    __slots__ = (
        "_app",
        "_backlog",
        "_eof",
        "_in",
        "_loop",
        "_out",
        "_paused",
        "_shutdown_timer",
        "_sslobj",
        "_state",
        "_tcp",
        "_tls",
        "_writing_paused",
        "context",
        "handshake",
    )

    def __init__(
        self, context: ssl.SSLContext, app: asyncio.Protocol, loop: asyncio.AbstractEventLoop
    ) -> None:
        # No super().__init__(): BaseTransport's would give every connection an empty
        # ``_extra`` dict that get_extra_info below never reads.
        self.context = context
        self._app: asyncio.Protocol | None = app
        self._loop = loop
        self.handshake: asyncio.Future[None] | None = loop.create_future()
        self._tcp: asyncio.Transport | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._sslobj: ssl.SSLObject | None = None
        # The C-level session under ``_sslobj`` (the same read/write/pending), called on
        # every record without ssl.py's Python wrappers.
        self._tls: Any = None
        self._state = _HANDSHAKE
        self._paused = False
        self._writing_paused = False  # the application was told pause_writing
        self._eof = False  # the application was given eof_received (once, as uvloop)
        self._backlog: list[bytes] | None = None  # plaintext SSL_write could not take yet
        self._shutdown_timer: asyncio.TimerHandle | None = None

    # -- the TCP transport's protocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]
        try:
            self._sslobj = self.context.wrap_bio(self._in, self._out, server_side=True)
            self._tls = getattr(self._sslobj, "_sslobj", self._sslobj)
        except Exception as exc:  # as uvloop: a context that cannot make a session
            self._handshake_failed(exc)

    def data_received(self, data: bytes) -> None:
        # OpenSSL's memory BIO keeps the largest buffer it ever needed for the connection's
        # life: fed a whole transport read (up to 256 KiB), a vehicle that once sent a large
        # frame would keep ~340 KiB; fed in slices, read out in between, it stays ~45 KiB.
        # The handshake's flights (the client's certificate chain, a few KiB) go in smaller
        # slices still: an idle vehicle, which never sent more than them, keeps a small one.
        size = _HANDSHAKE_SLICE if self._state == _HANDSHAKE else _BIO_SLICE
        if len(data) <= size:
            self._received(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), size):
            if self._state == _CLOSED:
                return
            if size == _HANDSHAKE_SLICE and self._state != _HANDSHAKE:
                # Shaken hands: what follows the client's last flight in the same read
                # (its first frames) goes in record-sized slices again.
                self.data_received(view[start:])  # type: ignore[arg-type]
                return
            self._received(view[start : start + size])

    def _received(self, data: bytes | memoryview) -> None:
        self._in.write(data)
        state = self._state
        if state == _OPEN:
            self._read()
        elif state == _HANDSHAKE:
            self._do_handshake()
        elif state == _CLOSING:
            self._do_shutdown()

    def eof_received(self) -> bool | None:
        if self._state == _HANDSHAKE:
            self._handshake_failed(ConnectionResetError())
        elif self._state != _CLOSED:
            # No close_notify: the application is not told of an end of stream (it could
            # take a truncation for the end), only of the lost connection.
            self._close_tcp()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        app = self._app
        if self._state == _HANDSHAKE:
            self._tcp = None  # gone already: nothing to abort
            self._handshake_failed(exc or ConnectionResetError())
            app = None
        self._state = _CLOSED
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
            self._shutdown_timer = None
        # What OpenSSL holds for the connection goes with the last reference.
        self._app = self._tcp = self._sslobj = self._tls = self._backlog = None
        if app is not None:
            # As uvloop: the application learns of it in a callback of its own.
            self._loop.call_soon(app.connection_lost, exc)

    def pause_writing(self) -> None:
        if self._app is not None and self._state == _OPEN and not self._writing_paused:
            self._writing_paused = True
            self._app.pause_writing()

    def resume_writing(self) -> None:
        # Closing too: a close() waits for the peer's close_notify (up to
        # SHUTDOWN_TIMEOUT_S), and the application's writers wait for this.
        if self._writing_paused:
            self._writing_paused = False
            if self._app is not None:
                self._app.resume_writing()

    # -- handshake ------------------------------------------------------------------------
    def _do_handshake(self) -> None:
        assert self._sslobj is not None
        try:
            self._sslobj.do_handshake()
        except _AGAIN:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._handshake_failed(exc)
            return
        self._state = _OPEN
        waiter, self.handshake = self.handshake, None
        assert self._app is not None
        self._app.connection_made(self)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        # Session tickets, and whatever came with the client's last handshake flight.
        self._read()

    def _handshake_failed(self, exc: BaseException) -> None:
        """As uvloop: the connection is aborted, the queued alert is not sent, and the
        application, never connected, is not told."""
        self._state = _CLOSED
        self._app = None
        waiter, self.handshake = self.handshake, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            # Marked as seen: whoever waits still gets it, and one that stopped waiting (a
            # deadline) leaves no "exception was never retrieved" line.
            waiter.exception()
        if self._tcp is not None:
            self._tcp.abort()

    # -- incoming -------------------------------------------------------------------------
    def _read(self) -> None:
        """Hand the application what can be decrypted, then send what OpenSSL queued."""
        if not self._paused:
            tls = self._tls
            incoming = self._in
            first = b""
            more: list[bytes] | None = None
            close_notify = False
            try:
                # Checking what is pending first spares most SSLWantReadError raises.
                while incoming.pending or tls.pending():
                    chunk = tls.read(_READ_SIZE)
                    if not chunk:
                        close_notify = True
                        break
                    if not first:
                        first = chunk
                    elif more is None:
                        more = [first, chunk]
                    else:
                        more.append(chunk)
            except _AGAIN:
                pass
            except ssl.SSLZeroReturnError:
                close_notify = True
            except ssl.SSLError as exc:
                self._fatal(exc)
                return
            app = self._app
            if first and app is not None:
                app.data_received(first if more is None else b"".join(more))
            if close_notify and self._state == _OPEN:
                self._eof_received()
                self.close()
                return
        if self._backlog and self._state == _OPEN:
            self._write_backlog()
        self._flush()

    def _eof_received(self) -> None:
        """The peer's close_notify: the application hears of it once, even after its own
        close() (as uvloop)."""
        if not self._eof and self._app is not None:
            self._eof = True
            self._app.eof_received()

    # -- outgoing -------------------------------------------------------------------------
    def _flush(self) -> None:
        data = self._out.read()
        if data and self._tcp is not None and self._state != _CLOSED:
            self._tcp.write(data)

    def _write_backlog(self) -> None:
        backlog, self._backlog = self._backlog, None
        for index, data in enumerate(backlog or ()):
            try:
                written = self._tls.write(data)
            except _AGAIN:  # a renegotiation waits for the peer: keep the rest
                self._backlog = (backlog or [])[index:]
                return
            if written < len(data):  # pragma: no cover - memory BIOs take whole writes
                self._backlog = [data[written:], *(backlog or [])[index + 1 :]]
                return

    def _fatal(self, exc: Exception) -> None:
        """An error in an established session: drop the connection, the application's
        ``connection_lost`` gets the error (as uvloop); counted and logged."""
        reason = str(getattr(exc, "reason", None) or type(exc).__name__).lower()
        metrics.TLS_SESSION_ERRORS.labels(listener=LISTENER, reason=reason).inc()
        tcp = self._tcp
        _SESSION_ERROR_LOG.warning(
            "tls session error: %s",
            reason,
            extra=fields(
                listener=LISTENER,
                reason=reason,
                peer=str(tcp.get_extra_info("peername")) if tcp is not None else "",
                error=str(exc),
            ),
        )
        self._state = _CLOSED
        app, self._app = self._app, None
        if tcp is not None:
            tcp.abort()
        if app is not None:
            self._loop.call_soon(app.connection_lost, exc)

    # -- the application's transport ------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN:
            return  # as uvloop: writes after close are dropped
        if self._backlog:
            self._backlog.append(bytes(data))
        else:
            try:
                self._tls.write(data)
            except _AGAIN:
                self._backlog = [bytes(data)]
            except ssl.SSLError as exc:
                self._fatal(exc)
                return
        self._flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def is_closing(self) -> bool:
        return self._state != _OPEN

    def close(self) -> None:
        """Send what is queued and ``close_notify``, then close once the peer answers."""
        if self._state == _HANDSHAKE:
            self.abort()
            return
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        self._shutdown_timer = self._loop.call_later(SHUTDOWN_TIMEOUT_S, self.abort)
        if self._backlog:
            self._write_backlog()
        self._do_shutdown()

    def _do_shutdown(self) -> None:
        sslobj = self._sslobj
        if sslobj is None:
            return
        close_notify = False
        try:
            # Application data after our close is discarded, as uvloop does.
            while self._in.pending or sslobj.pending():
                if not sslobj.read(_READ_SIZE):
                    close_notify = True
                    break
        except _AGAIN:
            pass
        except ssl.SSLZeroReturnError:
            close_notify = True
        except ssl.SSLError as exc:
            self._fatal(exc)
            return
        if close_notify:
            self._eof_received()
            if self._state != _CLOSING:
                return
        try:
            sslobj.unwrap()
        except _AGAIN:
            self._flush()  # our close_notify; the peer's is still to come
            return
        except (ssl.SSLError, OSError):
            self.abort()
            return
        self._flush()
        self._close_tcp()

    def _close_tcp(self) -> None:
        self._state = _CLOSED
        if self._tcp is not None:
            self._tcp.close()  # after what its buffer holds

    def abort(self) -> None:
        if self._state == _HANDSHAKE:
            # Whoever awaits the handshake learns it will not finish; the application,
            # never connected, is not told of the loss.
            self._handshake_failed(ConnectionAbortedError("aborted during the TLS handshake"))
            return
        self._state = _CLOSED
        if self._tcp is not None:
            self._tcp.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._sslobj
        if name == "ssl_object":
            return sslobj
        if name == "sslcontext":
            return self.context
        if sslobj is not None and self._state != _HANDSHAKE:
            # Made on request, not kept for every connection (uvloop keeps the dict).
            if name == "peercert":
                return sslobj.getpeercert()
            if name == "cipher":
                return sslobj.cipher()
            if name == "compression":
                return sslobj.compression()
        if self._tcp is not None:
            return self._tcp.get_extra_info(name, default)
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app  # type: ignore[return-value]

    def is_reading(self) -> bool:
        return not self._paused and self._tcp is not None and self._tcp.is_reading()

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._tcp is not None:
                self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._tcp is not None:
                self._tcp.resume_reading()
            if self._state == _OPEN:
                # Records that arrived before the pause may still wait in the BIOs.
                self._loop.call_soon(self._resume_read)

    def _resume_read(self) -> None:
        if self._state == _OPEN:
            self._read()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        queued = sum(len(data) for data in self._backlog or ())
        return queued + (self._tcp.get_write_buffer_size() if self._tcp is not None else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        if self._tcp is not None:
            return self._tcp.get_write_buffer_limits()
        return (0, 0)
