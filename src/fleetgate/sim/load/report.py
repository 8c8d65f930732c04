"""The load run's results: merged figures, the JSON form, the text table, progress lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from fleetgate.sim.load.histogram import LatencyHistogram
from fleetgate.sim.load.stats import ERRORS, StatsSnapshot

# What a protocol's throughput counts, and who acknowledges it.
UNITS: Final = {"teltonika": "records", "tesla": "frames", "gateways": "messages"}
SHORT_UNITS: Final = {"teltonika": "rec/s", "tesla": "fr/s", "gateways": "msg/s"}
ACKED_BY: Final = {"teltonika": "server", "tesla": "server", "gateways": "broker"}
PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
MIB: Final = 1024 * 1024


@dataclass(slots=True)
class ServerFigures:
    pid: int
    processes: int
    cpu_per_s: float
    rss_bytes: int


@dataclass(slots=True)
class LoadReport:
    settings: dict[str, Any]
    window_s: float
    generator_processes: int
    generator_cpu_per_s: float
    protocols: dict[str, StatsSnapshot] = field(default_factory=dict)
    stored: dict[str, int] | None = None
    stored_caught_up: bool | None = None
    stored_waited_s: float | None = None
    stored_error: str | None = None
    server: ServerFigures | None = None

    # -- figures -------------------------------------------------------------------------------
    def acked_per_s(self, protocol: str) -> float:
        """Acknowledged records (Teltonika), frames (Tesla), messages (gateways) per second."""
        snap = self.protocols[protocol]
        key = "acked_records" if protocol == "teltonika" else "acked_frames"
        return snap.window.get(key, 0) / self.window_s if self.window_s else 0.0

    def sent_per_s(self, protocol: str) -> float:
        snap = self.protocols[protocol]
        key = "sent_records" if protocol == "teltonika" else "sent_frames"
        return snap.window.get(key, 0) / self.window_s if self.window_s else 0.0

    @property
    def errors(self) -> int:
        return sum(
            sum(snap.totals.get(name, 0) for name in ERRORS) for snap in self.protocols.values()
        )

    def to_json(self) -> dict[str, Any]:
        protocols = {}
        for name, snap in self.protocols.items():
            histogram = snap.histogram()
            acked_key = "acked_records" if name == "teltonika" else "acked_frames"
            protocols[name] = {
                "devices": snap.devices,
                "connected": snap.connected,
                "unit": UNITS[name],
                "acked_by": ACKED_BY[name],
                "acked_per_s": round(self.acked_per_s(name), 1),
                "sent_per_s": round(self.sent_per_s(name), 1),
                "window": snap.window,
                "totals": {k: v for k, v in snap.totals.items() if k not in ERRORS},
                "latency_ms": latency_ms(histogram),
                "errors": {name: snap.totals.get(name, 0) for name in ERRORS},
                "first_error": snap.first_error,
                "stored": None if self.stored is None else self.stored.get(name),
                "acked_total": snap.totals.get(acked_key, 0),
            }
        return {
            "settings": self.settings,
            "window_s": round(self.window_s, 3),
            "protocols": protocols,
            "errors": self.errors,
            "stored": None
            if self.stored is None and self.stored_error is None
            else {
                "caught_up": self.stored_caught_up,
                "waited_s": None
                if self.stored_waited_s is None
                else round(self.stored_waited_s, 2),
                "error": self.stored_error,
            },
            "server": None
            if self.server is None
            else {
                "pid": self.server.pid,
                "processes": self.server.processes,
                "cpu_per_s": round(self.server.cpu_per_s, 3),
                "rss_mib": round(self.server.rss_bytes / MIB, 1),
            },
            "generator": {
                "processes": self.generator_processes,
                "cpu_per_s": round(self.generator_cpu_per_s, 3),
            },
        }

    # -- text ----------------------------------------------------------------------------------
    def text(self) -> str:
        settings = self.settings
        rate = settings["rate"]
        pace = f"{rate:g} frames/s per device" if rate else "as fast as acks allow"
        lines = [
            f"{self.generator_processes} generator process(es), {pace}, "
            f"{self.window_s:.1f} s measured after {settings['warmup_s']:g} s warm-up",
            f"{'':<10} {'devices':>11}  {'acked throughput':<34} "
            f"{'latency ms: p50':>15} {'p99':>7} {'p99.9':>7} {'max':>7}  errors",
        ]
        for name, snap in self.protocols.items():
            histogram = snap.histogram()
            acked = self.acked_per_s(name)
            if name == "teltonika":
                frames = snap.window.get("acked_frames", 0) / self.window_s
                throughput = f"{acked:,.0f} records/s ({frames:,.0f} frames/s)"
            elif name == "tesla":
                throughput = f"{acked:,.0f} frames/s"
            else:
                throughput = f"{acked:,.0f} messages/s published*"
            ms = latency_ms(histogram)
            errors = sum(snap.totals.get(e, 0) for e in ERRORS)
            lines.append(
                f"{name:<10} {snap.connected:>5}/{snap.devices:<5}  {throughput:<34} "
                f"{ms['p50']:>15.2f} {ms['p99']:>7.2f} {ms['p999']:>7.2f} {ms['max']:>7.1f}  "
                f"{errors}"
            )
        if "gateways" in self.protocols:
            lines.append(
                "* gateways: acked by the broker (PUBACK), not by fleetgate; latency is the "
                "broker's; fleetgate's count is 'stored' (needs --api)"
            )
        lines.extend(self._error_lines())
        lines.extend(self._stored_lines())
        server = self.server
        if server is not None:
            lines.append(
                f"server pid {server.pid} ({server.processes} process(es)): "
                f"{server.cpu_per_s:.2f} CPU-s per s, RSS {server.rss_bytes / MIB:,.0f} MiB"
            )
        lines.append(
            f"generator: {self.generator_processes} process(es), "
            f"{self.generator_cpu_per_s:.2f} CPU-s per s"
        )
        return "\n".join(lines)

    def _error_lines(self) -> list[str]:
        lines = []
        for name, snap in self.protocols.items():
            counted = {e: snap.totals.get(e, 0) for e in ERRORS if snap.totals.get(e, 0)}
            late = snap.totals.get("late_sends", 0)
            if counted:
                text = ", ".join(f"{e.replace('_', ' ')} {n:,}" for e, n in counted.items())
                first = f" (first: {snap.first_error})" if snap.first_error else ""
                lines.append(f"errors, {name}: {text}{first}")
            if late:
                lines.append(f"behind schedule, {name}: {late:,} sends more than an interval late")
        return lines

    def _stored_lines(self) -> list[str]:
        if self.stored_error is not None:
            return [f"stored: not counted ({self.stored_error})"]
        if self.stored is None:
            return []
        parts = []
        for name, snap in self.protocols.items():
            acked = snap.totals.get("acked_records" if name == "teltonika" else "acked_frames", 0)
            parts.append(f"{name} {self.stored.get(name, 0):,} of {acked:,} acked")
        state = "caught up" if self.stored_caught_up else "NOT caught up"
        return [
            f"stored (API, {state} after {self.stored_waited_s or 0:.1f} s): " + "; ".join(parts)
        ]


def latency_ms(histogram: LatencyHistogram) -> dict[str, float]:
    """Percentiles, mean and max of a microsecond histogram, in milliseconds."""
    figures = {key: histogram.value_at(p) / 1000 for key, p in PERCENTILES}
    return {
        "count": histogram.total,
        "mean": round(histogram.mean / 1000, 3),
        **{key: round(value, 3) for key, value in figures.items()},
        "max": round(histogram.max / 1000, 3),
    }


def progress_line(
    elapsed_s: float,
    rates: dict[str, float],
    errors: int,
    server_cpu: float | None,
) -> str:
    parts = [f"t={elapsed_s:5.0f}s"]
    parts += [f"{name} {rate:>10,.0f} {SHORT_UNITS[name]}" for name, rate in rates.items()]
    parts.append(f"errors {errors}")
    if server_cpu is not None:
        parts.append(f"server {server_cpu:.2f} CPU")
    return "  ".join(parts)
