"""Teltonika trackers for the load generator: pre-encoded AVL frames, stop-and-wait.

The frame pool is encoded once per process with the simulator's
:class:`~fleetgate.sim.teltonika.TrackerModel` (random walks, realistic IO elements, the
protocol core's encoder); a TCP AVL frame carries no IMEI, so every tracker of the process
sends from the same pool, each starting at its own place. Each send gets fresh record
times, one second apart and later than the tracker's previous frame
(:mod:`fleetgate.sim.restamp`), as a real tracker's clock would give: with the pool's fixed
times every commit inserted into the middle of each device's index in the store, which no
real fleet does, and the store's writes per record grew with its size.

A tracker connects, sends its IMEI, needs ``01`` back, then sends a frame and waits for the
4-byte ack (the record count), like the device: window 1. An ack with another count is an
error reply; so is a refused IMEI (``00``), counted as a connect failure.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

from fleetgate.protocols.teltonika.encoder import encode_imei
from fleetgate.sim.load.device import PacedDevice
from fleetgate.sim.load.stats import ProtocolStats
from fleetgate.sim.restamp import StampedFrame, TrackerClock
from fleetgate.sim.teltonika import SimulationSettings, TrackerModel

POOL_MODELS = 16
FRAMES_PER_MODEL = 8


def frame_pool(
    codec: str, records_per_frame: int, io_elements: int, seed: int, first_imei: int
) -> list[StampedFrame]:
    """``POOL_MODELS * FRAMES_PER_MODEL`` distinct AVL frames of ``records_per_frame`` records."""
    settings = SimulationSettings(
        codec=codec, records_per_frame=records_per_frame, io_elements=io_elements
    )
    frames = []
    for n in range(POOL_MODELS):
        model = TrackerModel(str(first_imei + n), random.Random(seed * 1000 + n), settings)
        for _ in range(FRAMES_PER_MODEL):
            records = [model.next_record() for _ in range(records_per_frame)]
            frames.append(StampedFrame.encode(model.codec, records, io16_group=model.io16_group))
    return frames


class Tracker(PacedDevice, asyncio.Protocol):
    """One tracker's TCP connection."""

    def __init__(
        self,
        imei: str,
        frames: Sequence[StampedFrame],
        start: int,
        stats: ProtocolStats,
        *,
        records_per_frame: int,
        interval_s: float,
    ) -> None:
        PacedDevice.__init__(
            self, stats, window=1, interval_s=interval_s, records_per_frame=records_per_frame
        )
        self.imei = imei
        self.frames = frames
        self.next_frame = start % len(frames)
        self.clock = TrackerClock(int(time.time() * 1000))
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.identified: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(encode_imei(self.imei))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if len(data) == 4 and self.alive and not self.buffer:  # the usual case: one ack
            count = int.from_bytes(data, "big")
            if count == self.records_per_frame:
                self.acked(0, count)
            else:
                self.refused(0)
            return
        self._split(self.buffer + data)

    def _split(self, data: bytes) -> None:
        """The handshake answer, then any number of 4-byte acks; keeps a partial one."""
        if not self.alive:
            if self.identified.done():
                return
            accepted = data[:1] == b"\x01"
            self.identified.set_result(accepted)
            self.alive = accepted
            data = data[1:]
        while len(data) >= 4:
            count = int.from_bytes(data[:4], "big")
            data = data[4:]
            if count == self.records_per_frame:
                self.acked(0, count)
            else:
                self.refused(0)
        self.buffer = data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.identified.done():
            self.identified.set_result(False)
        self.lost()

    # -- PacedDevice ----------------------------------------------------------------------------
    def write_frame(self, slot: int) -> None:
        assert self.transport is not None
        frames = self.frames
        index = self.next_frame
        self.transport.write(self.clock.stamp(frames[index]))
        index += 1
        self.next_frame = index if index < len(frames) else 0

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def connect_tracker(
    host: str,
    port: int,
    tracker: Tracker,
    timeout_s: float,
) -> bool:
    """Connect and pass the IMEI handshake; False (counted) when either fails."""
    loop = asyncio.get_running_loop()
    accepted = False
    try:
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(lambda: tracker, host, port)
            accepted = await tracker.identified
        if not accepted:
            tracker.stats.note("the server refused the IMEI (or closed the connection)")
    except (OSError, TimeoutError) as exc:
        tracker.stats.note(exc)
    if not accepted:
        tracker.stats.connect_failures += 1
        tracker.close()
        return False
    tracker.stats.connected += 1
    return True
