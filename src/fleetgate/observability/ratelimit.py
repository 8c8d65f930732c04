"""Log lines a device or a backend can cause once per event, limited per call site.

A tracker that sends junk, a scanner that opens thousands of sockets or a broker that is
down can each make the server log once per event. :class:`LimitedLog` lets the first
``burst`` lines of a call site through in each ``interval_s`` window, counts the rest, and
when the window ends writes one summary at the same level::

    udp datagram refused; no ack (suppressed 1990 similar lines in 60 s)

so a flood costs a few lines a minute while the first lines keep their evidence (peer,
reason, bytes). The summary is written by a timer at the end of the window, not by the
next event, so the count is never lost when the flood stops. Suppressed lines are counted
in ``fleetgate_log_lines_suppressed_total{key}``.

Usage, one limiter per call site (a module-level constant)::

    _REFUSED = LimitedLog(log, "teltonika.udp.refused")
    _REFUSED.warning("udp datagram refused; no ack", extra=fields(peer=..., reason=...))

Thread-safe: librdkafka's log lines arrive on its poll thread.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from fleetgate.observability.metrics import LOG_LINES_SUPPRESSED

DEFAULT_BURST = 10
DEFAULT_INTERVAL_S = 60.0

_instances: weakref.WeakSet[LimitedLog] = weakref.WeakSet()


def reset_all() -> None:
    """Start a fresh window everywhere, dropping what was suppressed (tests use this)."""
    for limited in list(_instances):
        limited.reset()


class LimitedLog:
    """At most ``burst`` lines per ``interval_s`` from one call site, then one summary."""

    def __init__(
        self,
        logger: logging.Logger,
        key: str,
        burst: int = DEFAULT_BURST,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval_s <= 0:
            raise ValueError("burst must be >= 1 and interval_s > 0")
        self.logger = logger
        self.key = key
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.RLock()
        self._window_end = 0.0
        self._passed = 0
        self._suppressed = 0
        # Level and message of the last suppressed line: what the summary repeats.
        self._level = logging.WARNING
        self._msg = ""
        self._timer: threading.Timer | None = None
        self._counter = LOG_LINES_SUPPRESSED.labels(key=key)
        _instances.add(self)

    @property
    def suppressed(self) -> int:
        """Lines suppressed in the current window (not yet summarised)."""
        return self._suppressed

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log like ``logger.log``; False when the line was suppressed."""
        if not self.logger.isEnabledFor(level):
            return False
        with self._lock:
            now = self._clock()
            if now >= self._window_end:
                self._flush_locked()
                self._window_end = now + self.interval_s
                self._passed = 0
            if self._passed < self.burst:
                self._passed += 1
                allowed = True
            else:
                allowed = False
                self._suppressed += 1
                self._level = level
                self._msg = msg % args if args else msg
                if self._timer is None:
                    self._arm_timer(self._window_end - now)
        if allowed:
            kwargs.setdefault("stacklevel", 2)
            self.logger.log(level, msg, *args, **kwargs)
        else:
            self._counter.inc()
        return allowed

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> bool:
        kwargs.setdefault("stacklevel", 3)  # the line that called debug()
        return self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> bool:
        kwargs.setdefault("stacklevel", 3)  # the line that called info()
        return self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> bool:
        kwargs.setdefault("stacklevel", 3)  # the line that called warning()
        return self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> bool:
        kwargs.setdefault("stacklevel", 3)  # the line that called error()
        return self.log(logging.ERROR, msg, *args, **kwargs)

    def reset(self) -> None:
        """Forget the current window and what it suppressed."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._window_end = 0.0
            self._passed = 0
            self._suppressed = 0

    def flush(self) -> None:
        """Write the summary of what was suppressed so far now (e.g. at shutdown)."""
        with self._lock:
            self._flush_locked()

    # -- internals -------------------------------------------------------------------------
    def _arm_timer(self, delay_s: float) -> None:
        timer = threading.Timer(max(0.0, delay_s), self._on_timer)
        timer.daemon = True
        timer.name = f"log-limit:{self.key}"
        self._timer = timer
        timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._clock() >= self._window_end:
                self._flush_locked()
            elif self._suppressed:
                # An injected clock lags the timer: try again at the window's end.
                self._arm_timer(self._window_end - self._clock())

    def _flush_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._suppressed:
            return
        count, self._suppressed = self._suppressed, 0
        self.logger.log(
            self._level,
            "%s (suppressed %d similar lines in %g s)",
            self._msg,
            count,
            self.interval_s,
            extra={"fields": {"suppressed": count, "log_key": self.key}},
        )
