"""Per-connection rate limiting of vehicle frames (sans-I/O: the caller passes the time).

The limiter is a sliding-window log: a frame is allowed when fewer than ``limit`` frames
were allowed in the last ``interval_s`` seconds. Each vehicle connection has its own.

What the ``rate_limit`` config section does (spec section 8):

* absent, or ``enabled: false``: *metrics only*. A 100 frames / 60 s window counts frames
  over it in ``rate_limit_exceeded_total`` but every frame is processed, as in the reference.
* ``enabled: true`` with ``mode: "fleetgate"`` (the default): **enforced**. At most
  ``message_limit`` frames per ``message_interval_time`` seconds per connection; frames over
  the limit are dropped: no dispatch, no ack, no error reply (the vehicle resends
  un-acked data), and they are counted.

  - ``message_limit`` 0 or missing would refuse everything (and crashes the reference's
    handler); fleetgate warns at start-up and falls back to metrics only.
  - ``message_interval_time`` 0 or missing: the reference ignores this key altogether;
    fleetgate warns and uses a 60 s window.
* ``enabled: true`` with ``mode: "reference"``: what Tesla's server really does, which is
  never limiting (its interval is always 0); fleetgate counts against 100 / 60 s like the
  disabled case.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

# The reference's always-on metrics-only limiter.
METRICS_ONLY_LIMIT = 100
METRICS_ONLY_INTERVAL_S = 60.0
DEFAULT_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """How a connection's frames are limited; ``warning`` is logged once at start-up."""

    enforce: bool
    limit: int
    interval_s: float
    warning: str | None = None


METRICS_ONLY = RateLimitSettings(False, METRICS_ONLY_LIMIT, METRICS_ONLY_INTERVAL_S)


class RateLimitOptions(Protocol):
    """The ``rate_limit`` config section, as far as the limiter reads it."""

    @property
    def enabled(self) -> bool: ...
    @property
    def message_limit(self) -> int: ...
    @property
    def message_interval_time(self) -> int: ...
    @property
    def mode(self) -> Literal["fleetgate", "reference"]: ...


def rate_limit_settings(config: RateLimitOptions | None) -> RateLimitSettings:
    """Turn the ``rate_limit`` config section into limiter settings."""
    if config is None or not config.enabled or config.mode == "reference":
        return METRICS_ONLY
    if config.message_limit <= 0:
        return RateLimitSettings(
            False,
            METRICS_ONLY_LIMIT,
            METRICS_ONLY_INTERVAL_S,
            "rate_limit.enabled is true but rate_limit.message_limit is 0; "
            "rate limiting disabled (counting only)",
        )
    if config.message_interval_time <= 0:
        return RateLimitSettings(
            True,
            config.message_limit,
            DEFAULT_INTERVAL_S,
            "rate_limit.message_interval_time is not set; "
            f"limiting to {config.message_limit} frames per {DEFAULT_INTERVAL_S:g} s",
        )
    return RateLimitSettings(True, config.message_limit, float(config.message_interval_time))


class SlidingWindowLimiter:
    """At most ``limit`` allowed events in any ``interval_s``-long window."""

    __slots__ = ("_times", "interval_s", "limit")

    def __init__(self, limit: int, interval_s: float) -> None:
        if limit <= 0 or interval_s <= 0:
            raise ValueError("limit and interval_s must be positive")
        self.limit = limit
        self.interval_s = interval_s
        # Allowed-event times; never longer than ``limit``. None until the first event: a
        # connection that never sends holds no deque (an empty one is about 600 bytes).
        self._times: deque[float] | None = None

    def allow(self, now: float) -> bool:
        """Record an event at ``now`` (seconds, monotonic) if it is within the limit."""
        times = self._times
        if times is None:
            times = self._times = deque()
        horizon = now - self.interval_s
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True
