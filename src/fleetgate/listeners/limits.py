"""Connection caps of the device listeners: in total and per peer address.

Each listener (Teltonika TCP, Tesla) holds one :class:`ConnectionLimiter`. A connection
takes a slot when it is accepted, before any byte is read (for Tesla: before the TLS
handshake, the expensive part), and gives it back when it closes. Past a cap the socket is
closed at once, counted in ``fleetgate_connections_refused_total{protocol, reason}``
(``max_connections`` or ``max_connections_per_ip``) and logged, rate-limited, with the
peer's address.

* ``max_connections_per_ip`` is off (0) by default: trackers often reach the server
  through one carrier NAT address, and a cap would refuse honest devices.
* ``max_connections`` 0 means sized for the machine (:func:`default_max_connections`):
  half the file descriptors the process may open, less :data:`RESERVED_DESCRIPTORS` for
  sinks, the store and the API, and never below :data:`MIN_CONNECTIONS`. At start the
  process raises its soft ``RLIMIT_NOFILE`` to the hard limit (as Go programs do), so the
  figure is the hard limit's. With several workers each worker has this budget.

The same module names the deadline refusals (handshake, idle, frame), so every listener
counts and logs them the same way: :meth:`ConnectionLimiter.refuse`.
"""

from __future__ import annotations

import logging
import resource
from collections import Counter
from typing import Final

from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog

log = logging.getLogger("fleetgate.listeners")

RESERVED_DESCRIPTORS: Final = 256
MIN_CONNECTIONS: Final = 64
# An "unlimited" hard limit is not a number to size a cap from.
_MAX_DESCRIPTORS: Final = 1 << 20

# Reasons, the ``reason`` label of fleetgate_connections_refused_total.
TOTAL_LIMIT: Final = "max_connections"
PER_IP_LIMIT: Final = "max_connections_per_ip"
HANDSHAKE_TIMEOUT: Final = "handshake_timeout"
IDLE_TIMEOUT: Final = "idle_timeout"
FRAME_TIMEOUT: Final = "frame_timeout"


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, _MAX_DESCRIPTORS)
    if soft == resource.RLIM_INFINITY:
        return _MAX_DESCRIPTORS
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit to %d: %s", target, exc)
    return int(soft)


def default_max_connections() -> int:
    """Connections one listener takes by default (see the module docstring)."""
    descriptors = raise_descriptor_limit()
    return max(MIN_CONNECTIONS, (descriptors - RESERVED_DESCRIPTORS) // 2)


class ConnectionLimiter:
    """Counts one listener's open connections, in total and per peer address."""

    def __init__(self, protocol: str, max_total: int = 0, max_per_ip: int = 0) -> None:
        self.protocol = protocol
        self.max_total = max_total if max_total > 0 else default_max_connections()
        self.max_per_ip = max_per_ip  # 0: no per-address cap
        self.total = 0
        self._by_ip: Counter[str] = Counter()
        self._logs: dict[str, LimitedLog] = {}

    def acquire(self, ip: str) -> str | None:
        """Take a slot for a connection from ``ip``; the refusal reason when over a cap."""
        if self.total >= self.max_total:
            return TOTAL_LIMIT
        if self.max_per_ip and self._by_ip[ip] >= self.max_per_ip:
            return PER_IP_LIMIT
        self.total += 1
        self._by_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        """Give back the slot :meth:`acquire` took."""
        self.total -= 1
        left = self._by_ip[ip] - 1
        if left > 0:
            self._by_ip[ip] = left
        else:
            del self._by_ip[ip]

    def connections_from(self, ip: str) -> int:
        return self._by_ip.get(ip, 0)

    def refuse(self, peer: str, reason: str, **evidence: object) -> None:
        """Count and log (rate-limited per reason) a connection refused or closed."""
        metrics.labelled(metrics.CONNECTIONS_REFUSED, self.protocol, reason).inc()
        limited = self._logs.get(reason)
        if limited is None:
            limited = self._logs[reason] = LimitedLog(log, f"{self.protocol}.refused.{reason}")
        limited.warning(
            "%s connection %s: %s",
            self.protocol,
            "refused" if reason in (TOTAL_LIMIT, PER_IP_LIMIT) else "closed",
            reason,
            extra=fields(protocol=self.protocol, peer=peer, reason=reason, **evidence),
        )
