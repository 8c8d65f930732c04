"""Counters of one protocol in one generator process, and their sum over processes.

Every device of a protocol in a process shares one :class:`ProtocolStats` (one event
loop, no locks): plain integer attributes bumped on the hot path, one latency histogram.
A measurement window (after the warm-up) is marked by copying the counters at its start
and end; the histogram is replaced at the window's start, so latencies are the window's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from fleetgate.sim.load.histogram import LatencyHistogram

# Counters that grow during a run; their values at the window's edges give throughput.
FLOW: Final = ("sent_frames", "sent_records", "acked_frames", "acked_records")
# What went wrong; reported over the whole run.
ERRORS: Final = (
    "connect_failures",
    "disconnects",
    "error_replies",
    "unexpected_replies",
    "missing_acks",
)


class ProtocolStats:
    """What the devices of one protocol did in this process."""

    __slots__ = (
        "acked_frames",
        "acked_records",
        "connect_failures",
        "connected",
        "devices",
        "disconnects",
        "error_replies",
        "first_error",
        "late_sends",
        "latency",
        "missing_acks",
        "sent_frames",
        "sent_records",
        "unexpected_replies",
        "window_end",
        "window_start",
    )

    def __init__(self, devices: int = 0) -> None:
        self.devices = devices
        self.connected = 0
        self.sent_frames = 0
        self.sent_records = 0
        self.acked_frames = 0
        self.acked_records = 0
        self.connect_failures = 0
        self.disconnects = 0
        self.error_replies = 0
        self.unexpected_replies = 0
        self.missing_acks = 0
        # Sends that went out more than one interval after they were due (the server, or
        # the generator, could not keep the requested rate).
        self.late_sends = 0
        self.first_error: str | None = None  # what the first failure said, for the report
        self.latency = LatencyHistogram()
        self.window_start: dict[str, int] = dict.fromkeys(FLOW, 0)
        self.window_end: dict[str, int] | None = None

    def note(self, error: BaseException | str) -> None:
        """Keep the first failure's text (the report shows it next to the counts)."""
        if self.first_error is None:
            text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            self.first_error = text[:300]

    @property
    def errors(self) -> int:
        return sum(getattr(self, name) for name in ERRORS)

    def flow(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in FLOW}

    def start_window(self) -> None:
        self.window_start = self.flow()
        self.latency = LatencyHistogram()

    def end_window(self) -> None:
        self.window_end = self.flow()

    def progress(self) -> dict[str, int]:
        """Running totals for the live display."""
        return {**self.flow(), "errors": self.errors}

    def snapshot(self) -> StatsSnapshot:
        end = self.window_end if self.window_end is not None else self.flow()
        return StatsSnapshot(
            devices=self.devices,
            connected=self.connected,
            totals={name: getattr(self, name) for name in (*FLOW, *ERRORS, "late_sends")},
            window={name: end[name] - self.window_start[name] for name in FLOW},
            latency=self.latency.to_dict(),
            first_error=self.first_error,
        )


@dataclass(slots=True)
class StatsSnapshot:
    """One process's figures for one protocol (picklable), or their sum."""

    devices: int = 0
    connected: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    window: dict[str, int] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=lambda: LatencyHistogram().to_dict())
    first_error: str | None = None

    @classmethod
    def combined(cls, snapshots: list[StatsSnapshot]) -> StatsSnapshot:
        result = cls()
        histogram = LatencyHistogram()
        for snap in snapshots:
            result.devices += snap.devices
            result.connected += snap.connected
            for name, value in snap.totals.items():
                result.totals[name] = result.totals.get(name, 0) + value
            for name, value in snap.window.items():
                result.window[name] = result.window.get(name, 0) + value
            histogram.merge(LatencyHistogram.from_dict(snap.latency))
            result.first_error = result.first_error or snap.first_error
        result.latency = histogram.to_dict()
        return result

    def histogram(self) -> LatencyHistogram:
        return LatencyHistogram.from_dict(self.latency)
