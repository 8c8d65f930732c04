"""Dropped gateway messages: a count per gateway and reason, a metric, a rate-limited log line.

A misconfigured gateway can send hundreds of bad messages a second; the log gets at most
one line per (gateway, reason) per interval, and that line says how many were suppressed
since the previous one. Metric labels are gateway ids, which come from the network: after
:data:`MAX_GATEWAY_LABELS` distinct ids the rest are counted under ``_other``, so a flood
of made-up topics cannot grow the metric registry without bound.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final

from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.protocols.mqtt import Refusal

MAX_GATEWAY_LABELS: Final = 10_000
MAX_LOG_KEYS: Final = 10_000
UNKNOWN_GATEWAY: Final = "_unknown"
OTHER_GATEWAY: Final = "_other"

log = logging.getLogger("fleetgate.mqtt_ingest")


class RefusalTracker:
    """Counts refusals and writes their log lines (``now`` is the caller's clock, seconds)."""

    def __init__(self, log_interval_s: float = 10.0) -> None:
        self.log_interval_s = log_interval_s
        self.by_reason: Counter[str] = Counter()
        self._labels: set[str] = set()
        # (gateway, reason) -> (time of the last line, lines suppressed since)
        self._last_line: dict[tuple[str, str], tuple[float, int]] = {}

    def _label(self, gateway_id: str | None) -> str:
        if gateway_id is None:
            return UNKNOWN_GATEWAY
        if gateway_id in self._labels:
            return gateway_id
        if len(self._labels) >= MAX_GATEWAY_LABELS:
            return OTHER_GATEWAY
        self._labels.add(gateway_id)
        return gateway_id

    def record(self, refusal: Refusal, now: float) -> None:
        reason = refusal.reason.value
        gateway = self._label(refusal.gateway_id)
        self.by_reason[reason] += 1
        metrics.labelled(metrics.MQTT_REFUSED, gateway, reason).inc()
        key = (gateway, reason)
        last = self._last_line.get(key)
        if last is not None and now - last[0] < self.log_interval_s:
            self._last_line[key] = (last[0], last[1] + 1)
            return
        if len(self._last_line) >= MAX_LOG_KEYS:
            self._last_line.clear()
        self._last_line[key] = (now, 0)
        log.warning(
            "gateway message dropped: %s",
            reason,
            extra=fields(
                gateway=refusal.gateway_id,
                reason=reason,
                topic=refusal.topic[:200],
                detail=refusal.detail,
                suppressed=last[1] if last is not None else 0,
            ),
        )
