"""Simulated Teltonika trackers: IMEI handshake, AVL frames, and a check of every ack.

Each tracker drives a random walk from a start point, packs ``records_per_frame`` records
into one codec 8 / 8E / 16 frame with the protocol core's encoder, sends it, and waits for
the u32 ack, which must equal the number of records in the frame. The simulator reuses the
server's own encoder, so a decoder bug shows up as a mismatch on the wire rather than
hiding in both halves.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei
from fleetgate.protocols.teltonika.model import CODEC_8, CODEC_8E, CODEC_16, AvlRecord
from fleetgate.sim.report import run_devices

CODECS = {"8": CODEC_8, "8E": CODEC_8E, "8e": CODEC_8E, "16": CODEC_16}
FIRST_IMEI = 356307042441013


@dataclass(slots=True)
class SimulationSettings:
    host: str = "127.0.0.1"
    port: int = 5027
    devices: int = 1
    # Records per second per tracker (0 = as fast as acks come back).
    rate: float = 1.0
    codec: str = "8E"
    records_per_frame: int = 1
    duration_s: float | None = 10.0
    # Stop each tracker after this many frames (None = until duration ends).
    frames_per_device: int | None = None
    io_elements: int = 8
    report_interval_s: float = 1.0
    ack_timeout_s: float = 30.0
    first_imei: int = FIRST_IMEI
    keep_sent: bool = False
    seed: int | None = None


@dataclass(slots=True)
class SimulationResult:
    records_sent: int = 0
    records_acked: int = 0
    frames_sent: int = 0
    frames_acked: int = 0
    ack_mismatches: int = 0
    handshake_failures: int = 0
    connection_errors: int = 0
    elapsed_s: float = 0.0
    sent: dict[str, list[AvlRecord]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.records_sent == self.records_acked
            and self.ack_mismatches == 0
            and self.handshake_failures == 0
            and self.connection_errors == 0
        )

    def summary(self) -> str:
        rate = self.records_acked / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"records sent={self.records_sent} acked={self.records_acked} "
            f"frames sent={self.frames_sent} acked={self.frames_acked} "
            f"ack mismatches={self.ack_mismatches} handshake failures={self.handshake_failures} "
            f"connection errors={self.connection_errors} elapsed={self.elapsed_s:.1f}s "
            f"({rate:,.0f} records/s acked)"
        )


class TrackerModel:
    """A tracker's moving state: position, heading, odometer, inputs."""

    def __init__(self, imei: str, rng: random.Random, settings: SimulationSettings) -> None:
        self.imei = imei
        self.rng = rng
        self.codec = CODECS[settings.codec]
        self.io_elements = settings.io_elements
        self.latitude = 54.68 + rng.uniform(-0.2, 0.2)
        self.longitude = 25.28 + rng.uniform(-0.2, 0.2)
        self.heading = rng.uniform(0, 360)
        self.odometer = rng.randrange(1_000_000, 50_000_000)
        self.timestamp_ms = int(time.time() * 1000) - 3_600_000

    def next_record(self) -> AvlRecord:
        rng = self.rng
        speed = max(0, int(rng.gauss(50, 20)))
        self.heading = (self.heading + rng.uniform(-15, 15)) % 360
        step = speed / 3600 / 111  # degrees travelled in one second, roughly
        heading = math.radians(self.heading)
        self.latitude = max(-89.0, min(89.0, self.latitude + step * math.cos(heading)))
        self.longitude = ((self.longitude + step * math.sin(heading) + 180) % 360) - 180
        self.odometer += speed * 1000 // 3600
        self.timestamp_ms += 1000
        io: dict[int, int | bytes] = {
            239: 1,  # ignition
            240: 1 if speed else 0,  # movement
            21: rng.randrange(0, 6),  # GSM signal
            69: 1,  # GNSS status
            66: rng.randrange(12_000, 14_500),  # external voltage, mV
            67: rng.randrange(3_900, 4_200),  # battery voltage, mV
            16: self.odometer,  # total odometer, m
            181: rng.randrange(5, 30),  # PDOP x10
        }
        # Pad with more elements (ids the table does not name) up to the requested count.
        extra_id = 1000 if self.codec != CODEC_8 else 150
        while len(io) < self.io_elements:
            io[extra_id] = rng.randrange(0, 200)
            extra_id += 1
        while len(io) > self.io_elements:
            io.popitem()
        return AvlRecord(
            timestamp_ms=self.timestamp_ms,
            priority=0,
            longitude=round(self.longitude, 7),
            latitude=round(self.latitude, 7),
            altitude=rng.randrange(80, 200),
            angle=int(self.heading),
            satellites=rng.randrange(6, 16),
            speed=speed,
            event_io_id=0,
            io=io,
            generation_type=5 if self.codec == CODEC_16 else None,
        )


async def _run_tracker(
    index: int,
    settings: SimulationSettings,
    result: SimulationResult,
    deadline: float | None,
) -> None:
    imei = str(settings.first_imei + index)
    rng = random.Random(None if settings.seed is None else settings.seed + index)
    model = TrackerModel(imei, rng, settings)
    try:
        reader, writer = await asyncio.open_connection(settings.host, settings.port)
    except OSError:
        result.connection_errors += 1
        return
    try:
        writer.write(encode_imei(imei))
        reply = await asyncio.wait_for(reader.readexactly(1), settings.ack_timeout_s)
        if reply != b"\x01":
            result.handshake_failures += 1
            return
        per_frame = settings.records_per_frame
        interval = per_frame / settings.rate if settings.rate > 0 else 0.0
        # Spread trackers over the first interval so they do not all send at once.
        next_send = time.monotonic() + (rng.uniform(0, interval) if interval else 0.0)
        frames = 0
        while settings.frames_per_device is None or frames < settings.frames_per_device:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if interval and next_send > now:
                await asyncio.sleep(next_send - now)
            next_send += interval
            records = [model.next_record() for _ in range(per_frame)]
            writer.write(encode_avl_frame(model.codec, records))
            result.frames_sent += 1
            result.records_sent += per_frame
            if settings.keep_sent:
                result.sent.setdefault(imei, []).extend(records)
            ack = await asyncio.wait_for(reader.readexactly(4), settings.ack_timeout_s)
            count = int.from_bytes(ack, "big")
            if count != per_frame:
                result.ack_mismatches += 1
            else:
                result.frames_acked += 1
                result.records_acked += count
            frames += 1
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        result.connection_errors += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def run_simulation(
    settings: SimulationSettings,
    report: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Run the trackers until the duration or frame count is reached; print live summaries."""
    result = SimulationResult()
    deadline = time.monotonic() + settings.duration_s if settings.duration_s else None
    trackers = [
        _run_tracker(index, settings, result, deadline) for index in range(settings.devices)
    ]
    result.elapsed_s = await run_devices(
        trackers,
        lambda: (
            result.records_sent,
            result.records_acked,
            result.connection_errors + result.ack_mismatches,
        ),
        settings.report_interval_s,
        report,
    )
    return result
