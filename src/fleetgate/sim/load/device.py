"""When a simulated device may send: its ack window, its rate, the run's start and stop.

A device has ``window`` numbered slots; a frame takes a free slot when it is sent and
gives it back when its ack (or error reply) comes, so at most ``window`` frames wait for
an ack at once (1 = stop-and-wait, as a Teltonika tracker does). With a rate, sends are
due every ``interval`` seconds; a send whose slot is not free in time goes out as soon as
one is, and one that is more than an interval late is counted in ``late_sends`` (the
schedule restarts from then, it does not burst to catch up). With rate 0 a device sends
whenever a slot is free.

Subclasses write the pre-encoded frame of a slot in :meth:`write_frame` and call
:meth:`acked` / :meth:`refused` from their protocol callbacks. Per frame this costs a
clock read, a list store and a few integer additions: no objects, no timers (a timer is
only armed while a rate-limited device waits for its next due time).
"""

from __future__ import annotations

import asyncio
import time

from fleetgate.sim.load.stats import ProtocolStats

_clock_ns = time.perf_counter_ns


class PacedDevice:
    """Window and rate bookkeeping shared by the protocol drivers."""

    def __init__(
        self,
        stats: ProtocolStats,
        *,
        window: int,
        interval_s: float,
        records_per_frame: int = 1,
    ) -> None:
        self.stats = stats
        self.window = window
        self.interval = interval_s
        self.records_per_frame = records_per_frame
        self.free = list(range(window - 1, -1, -1))  # a stack: slot 0 first
        self.sent_at = [0] * window
        self.in_flight = [False] * window
        self.running = False
        self.alive = False
        self.closing = False
        self.due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what subclasses provide ---------------------------------------------------------------
    def write_frame(self, slot: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection (set ``closing`` first: not a disconnect to count)."""
        raise NotImplementedError

    # -- run control ---------------------------------------------------------------------------
    def begin(self, first_delay_s: float) -> None:
        """Start sending ``first_delay_s`` from now (spreads devices over an interval)."""
        loop = self._loop = asyncio.get_running_loop()
        self.running = True
        self.due = loop.time() + first_delay_s
        self.pump()

    def stop(self) -> None:
        """Send nothing more; frames in flight may still be acked."""
        self.running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def waiting(self) -> int:
        """Frames sent and not yet answered."""
        return self.window - len(self.free)

    # -- the send path -------------------------------------------------------------------------
    def pump(self) -> None:
        """Send what the window and the schedule allow now; arm a timer for the rest."""
        free = self.free
        interval = self.interval
        while self.running and self.alive and free:
            if interval:
                loop = self._loop
                assert loop is not None
                now = loop.time()
                if now < self.due:
                    if self._timer is None:
                        self._timer = loop.call_at(self.due, self._on_timer)
                    return
                if now - self.due > interval:
                    self.stats.late_sends += 1
                    self.due = now
                self.due += interval
            slot = free.pop()
            self.in_flight[slot] = True
            self.sent_at[slot] = _clock_ns()
            stats = self.stats
            stats.sent_frames += 1
            stats.sent_records += self.records_per_frame
            self.write_frame(slot)

    def _on_timer(self) -> None:
        self._timer = None
        self.pump()

    # -- the answer path -----------------------------------------------------------------------
    def acked(self, slot: int, records: int) -> None:
        """The frame in ``slot`` was acknowledged for ``records`` records."""
        if not self.in_flight[slot]:
            self.stats.unexpected_replies += 1
            return
        stats = self.stats
        stats.latency.record((_clock_ns() - self.sent_at[slot]) // 1000)
        stats.acked_frames += 1
        stats.acked_records += records
        self.in_flight[slot] = False
        self.free.append(slot)
        if self.running:
            self.pump()

    def refused(self, slot: int) -> None:
        """The frame in ``slot`` got an error reply (or a wrong ack): not acknowledged."""
        if not self.in_flight[slot]:
            self.stats.unexpected_replies += 1
            return
        self.stats.error_replies += 1
        self.in_flight[slot] = False
        self.free.append(slot)
        if self.running:
            self.pump()

    def lost(self) -> None:
        """The connection ended; counted unless the generator closed it."""
        if self.alive and not self.closing:
            self.stats.disconnects += 1
        self.alive = False
        self.stop()
