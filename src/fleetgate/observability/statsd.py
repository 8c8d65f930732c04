"""``monitoring.statsd``: every metric of the registry sent to a StatsD server.

The reference sends its metrics to StatsD instead of Prometheus when
``monitoring.statsd.host`` is set (and ``prometheus_metrics_port`` is not). fleetgate
keeps one set of metrics (the Prometheus registry, :mod:`fleetgate.observability.metrics`)
and sends it every ``flush_period`` milliseconds through the ``statsd`` client library:
counters as the increase since the last flush (``|c``), gauges as their value when it
changed (``|g``), histograms as their ``_count`` and ``_sum`` increases. Names are the
Prometheus sample names (``record_total``, ``fleetgate_records_total``...) after the
configured ``prefix``, with Influx-style tags as the reference sends them:
``<prefix>record_total,record_type=V:3|c``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from prometheus_client import CollectorRegistry
from statsd import StatsClient

log = logging.getLogger("fleetgate.statsd")

_UNSAFE = re.compile(r"[\s,=:|]")
MIN_FLUSH_S = 0.05


def _tag(value: str) -> str:
    return _UNSAFE.sub("_", value)


def stat_name(prefix: str, name: str, labels: dict[str, str]) -> str:
    """``<prefix><name>,label=value,...`` (InfluxDB tag style, as the reference sends)."""
    tags = "".join(f",{_tag(key)}={_tag(value)}" for key, value in sorted(labels.items()))
    return f"{prefix}{name}{tags}"


class StatsdExporter:
    """Sends the changes of a Prometheus registry to StatsD at a fixed period."""

    def __init__(
        self, address: str, prefix: str, flush_s: float, registry: CollectorRegistry
    ) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.client = StatsClient(host.strip("[]"), int(port), ipv6=":" in host)
        self.prefix = prefix
        self.flush_s = max(flush_s, MIN_FLUSH_S)
        self.registry = registry
        self._sent: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def flush(self) -> int:
        """Send what changed since the last flush; returns the number of stats sent."""
        pipe = self.client.pipeline()
        sent = 0
        for family in self.registry.collect():
            for sample in family.samples:
                name = sample.name
                if name.endswith(("_created", "_bucket")):
                    continue
                key = stat_name(self.prefix, name, dict(sample.labels))
                value = float(sample.value)
                previous = self._sent.get(key)
                if family.type in ("counter", "histogram", "summary"):
                    delta = value - (previous or 0.0)
                    if delta > 0:
                        pipe.incr(key, int(delta) if delta.is_integer() else delta)
                        sent += 1
                elif previous != value:
                    pipe.gauge(key, value)
                    sent += 1
                self._sent[key] = value
        pipe.send()
        return sent

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="statsd")
        log.info("statsd: sending metrics to %s every %g ms", self.address, self.flush_s * 1000)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):
            self.flush()  # the last counts

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                self.flush()
            except OSError as exc:  # UDP: an unreachable server is not our failure
                log.debug("statsd: send failed: %s", exc)
