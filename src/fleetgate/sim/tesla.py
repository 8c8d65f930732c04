"""Simulated Tesla vehicles: mTLS WebSocket, real envelopes and protobufs, every ack checked.

Each vehicle connects with a client certificate (its VIN is the certificate's CN, as for a
real car), then sends ``V`` frames: a flatbuffers envelope built with the protocol core's
:func:`build_stream_envelope` around a ``vehicle_data.Payload`` protobuf holding a few
realistic signals (speed, odometer, state of charge, location, gear, temperatures). Every
frame has its own txid; the server must answer each with an ack (message_type 5) carrying
that txid and topic. Error replies, unknown txids and acks that never come are counted, and
the run fails if any frame is left unacknowledged.

Up to ``window`` frames per vehicle may wait for their ack at once (1 = send, wait, send).

Certificates: ``--cert-dir`` holds ``<VIN>.crt``/``<VIN>.key`` pairs (as written by
``fleetgate certs init``), one per vehicle; with ``--cert``/``--key`` every simulated
vehicle presents the same certificate and so reports the same VIN (fine for load, but the
server sees N connections of one car).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from google.protobuf.timestamp_pb2 import Timestamp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from fleetgate.pki import client_ssl_context
from fleetgate.protocols.tesla.envelope import (
    MESSAGE_STREAM,
    MESSAGE_STREAM_ACK,
    EnvelopeError,
    build_stream_envelope,
    parse_envelope,
)
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from fleetgate.sim.failures import describe
from fleetgate.sim.pacing import paced
from fleetgate.sim.report import run_devices

TOPIC = "V"


@dataclass(frozen=True, slots=True)
class VehicleCredentials:
    """A client certificate and key, and the VIN (certificate CN) they stand for."""

    vin: str
    cert: Path
    key: Path


def certificate_cn(cert: Path) -> str:
    """The last Subject CN of a PEM certificate (Tesla's rule), dots turned into dashes."""
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    values = [
        str(attr.value) for attr in loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    return values[-1].replace(".", "-") if values else ""


def credentials_from_dir(directory: str | Path) -> list[VehicleCredentials]:
    """Every ``<name>.crt`` with a matching ``<name>.key`` in ``directory``, sorted."""
    found = []
    for cert in sorted(Path(directory).glob("*.crt")):
        key = cert.with_suffix(".key")
        if key.is_file():
            found.append(VehicleCredentials(certificate_cn(cert), cert, key))
    return found


def credentials_from_cert(cert: str | Path, key: str | Path) -> VehicleCredentials:
    path = Path(cert)
    return VehicleCredentials(certificate_cn(path), path, Path(key))


@dataclass(slots=True)
class TeslaSimSettings:
    url: str
    ca: str | Path | None
    credentials: Sequence[VehicleCredentials]
    vehicles: int = 1
    # Frames per second per vehicle (0 = as fast as the ack window allows).
    rate: float = 1.0
    duration_s: float | None = 10.0
    # Stop each vehicle after this many frames (None = until the duration ends).
    frames_per_vehicle: int | None = None
    window: int = 1
    report_interval_s: float = 1.0
    ack_timeout_s: float = 30.0
    network_interface: str = "wifi"
    client_version: str = "1.0.0"
    seed: int | None = None


@dataclass(slots=True)
class TeslaSimResult:
    frames_sent: int = 0
    frames_acked: int = 0
    error_replies: int = 0
    unexpected_replies: int = 0
    connection_errors: int = 0
    elapsed_s: float = 0.0
    vins: set[str] = field(default_factory=set)
    # Why connections failed: reason -> count (see fleetgate.sim.failures).
    failures: Counter[str] = field(default_factory=Counter)

    def failed(self, exc: BaseException, target: str) -> None:
        self.connection_errors += 1
        self.failures[describe(exc, target)] += 1

    @property
    def missing_acks(self) -> int:
        return self.frames_sent - self.frames_acked

    @property
    def ok(self) -> bool:
        return (
            self.frames_sent > 0
            and self.missing_acks == 0
            and self.error_replies == 0
            and self.unexpected_replies == 0
            and self.connection_errors == 0
        )

    def summary(self) -> str:
        rate = self.frames_acked / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"frames sent={self.frames_sent} acked={self.frames_acked} "
            f"missing acks={self.missing_acks} error replies={self.error_replies} "
            f"unexpected replies={self.unexpected_replies} "
            f"connection errors={self.connection_errors} distinct VINs={len(self.vins)} "
            f"elapsed={self.elapsed_s:.1f}s ({rate:,.0f} frames/s acked)"
        )


class VehicleModel:
    """A car driving a loop: position, speed, odometer and state of charge move together."""

    def __init__(self, vin: str, rng: random.Random) -> None:
        self.vin = vin
        self.rng = rng
        self.lat = 37.3947 + rng.uniform(-0.05, 0.05)
        self.lon = -122.1503 + rng.uniform(-0.05, 0.05)
        self.heading = rng.uniform(0, 360)
        self.speed_mph = rng.uniform(0, 45)
        self.odometer = rng.uniform(1_000, 60_000)
        self.soc = rng.uniform(40, 95)
        self.last = time.monotonic()

    def step(self) -> None:
        now = time.monotonic()
        dt = min(now - self.last, 60.0)
        self.last = now
        self.speed_mph = min(max(self.speed_mph + self.rng.uniform(-4, 4), 0.0), 85.0)
        self.heading = (self.heading + self.rng.uniform(-15, 15)) % 360
        miles = self.speed_mph * dt / 3600
        self.odometer += miles
        self.soc = max(self.soc - miles * 0.25, 5.0)
        rad = math.radians(self.heading)
        self.lat += miles / 69.0 * math.cos(rad)
        self.lon += miles / (69.0 * max(math.cos(math.radians(self.lat)), 0.1)) * math.sin(rad)

    def payload(self, now_s: float) -> bytes:
        self.step()
        payload = vd.Payload()
        moving = self.speed_mph > 0.5

        def add(key: int) -> vd.Value:
            datum = payload.data.add()
            datum.key = key  # type: ignore[assignment]
            return datum.value

        # Older firmware sends most values as strings; newer ones (prefer_typed) as numbers.
        add(vd.VehicleSpeed).string_value = f"{self.speed_mph:.1f}"
        add(vd.Odometer).double_value = round(self.odometer, 3)
        add(vd.Soc).double_value = round(self.soc, 2)
        location = add(vd.Location).location_value
        location.latitude = round(self.lat, 6)
        location.longitude = round(self.lon, 6)
        add(vd.Gear).shift_state_value = vd.ShiftStateD if moving else vd.ShiftStateP
        add(vd.GpsHeading).double_value = round(self.heading, 1)
        add(vd.InsideTemp).double_value = round(21.5 + self.rng.uniform(-0.5, 0.5), 1)
        add(vd.OutsideTemp).double_value = round(16.0 + self.rng.uniform(-2, 2), 1)
        add(vd.EstBatteryRange).double_value = round(self.soc * 3.1, 1)
        created = Timestamp()
        created.FromNanoseconds(int(now_s * 1e9))
        payload.created_at.CopyFrom(created)
        return payload.SerializeToString()


def build_vehicle_frame(model: VehicleModel, txid: str, now_s: float) -> bytes:
    """One ``V`` frame exactly as a vehicle sends it."""
    return build_stream_envelope(
        txid=txid.encode(),
        topic=TOPIC.encode(),
        payload=model.payload(now_s),
        sender_id=f"vehicle_device.{model.vin}".encode(),
        device_type=b"vehicle_device",
        device_id=model.vin.encode(),
        created_at=int(now_s),
        delivered_at_epoch_ms=int(now_s * 1000),
        message_id=f"{txid}-m".encode(),
    )


class _Vehicle:
    """One simulated car's connection: a sender loop and a receiver of acks."""

    def __init__(
        self,
        index: int,
        creds: VehicleCredentials,
        context: ssl.SSLContext,
        settings: TeslaSimSettings,
        result: TeslaSimResult,
    ) -> None:
        self.index = index
        self.creds = creds
        self.context = context
        self.settings = settings
        self.result = result
        rng = random.Random(None if settings.seed is None else settings.seed + index)
        self.model = VehicleModel(creds.vin, rng)
        self.pending: set[bytes] = set()
        self.window = asyncio.Semaphore(max(settings.window, 1))
        self.drained = asyncio.Event()
        self.drained.set()

    async def run(self, deadline: float | None) -> None:
        settings = self.settings
        try:
            ws = await connect(
                settings.url,
                ssl=self.context,
                additional_headers={
                    "X-Network-Interface": settings.network_interface,
                    "Version": settings.client_version,
                    "User-Agent": "fleetgate-sim/tesla (vehicle_device)",
                },
                compression=None,
                max_size=2**21,
                ping_interval=None,
                open_timeout=settings.ack_timeout_s,
            )
        except (OSError, InvalidHandshake, TimeoutError, ssl.SSLError) as exc:
            self.result.failed(exc, settings.url)
            return
        self.result.vins.add(self.creds.vin)
        receiver = asyncio.create_task(self._receive(ws))
        try:
            await self._send_loop(ws, deadline)
            # Let the last acks arrive before closing.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.ack_timeout_s):
                    await self.drained.wait()
        except (ConnectionClosed, OSError) as exc:
            self.result.failed(exc, settings.url)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
            with contextlib.suppress(Exception):
                await ws.close()

    async def _send_loop(self, ws: ClientConnection, deadline: float | None) -> None:
        settings = self.settings
        interval = 1.0 / settings.rate if settings.rate > 0 else 0.0
        limit = settings.frames_per_vehicle
        async for sequence in paced(interval, limit, deadline, self.model.rng):
            await self.window.acquire()
            txid = f"{self.creds.vin}-{self.index}-{sequence}"
            frame = build_vehicle_frame(self.model, txid, time.time())
            self.pending.add(txid.encode())
            self.drained.clear()
            await ws.send(frame)
            self.result.frames_sent += 1

    async def _receive(self, ws: ClientConnection) -> None:
        result = self.result
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if isinstance(message, str):
                    result.unexpected_replies += 1
                    continue
                try:
                    envelope = parse_envelope(message)
                except EnvelopeError:
                    result.unexpected_replies += 1
                    continue
                txid = envelope.txid
                if envelope.message_type == MESSAGE_STREAM_ACK and envelope.topic == b"V":
                    if txid in self.pending:
                        result.frames_acked += 1
                    else:
                        result.unexpected_replies += 1
                elif envelope.message_type == MESSAGE_STREAM:
                    result.error_replies += 1
                else:
                    result.unexpected_replies += 1
                if txid in self.pending:
                    self.pending.discard(txid)
                    self.window.release()
                    if not self.pending:
                        self.drained.set()


async def run_simulation(
    settings: TeslaSimSettings, report: Callable[[str], None] | None = None
) -> TeslaSimResult:
    """Run the vehicles until the duration or frame count is reached; report every second."""
    if not settings.credentials:
        raise ValueError("no vehicle certificates given")
    contexts = {
        creds: client_ssl_context(creds.cert, creds.key, settings.ca)
        for creds in settings.credentials
    }
    result = TeslaSimResult()
    deadline = time.monotonic() + settings.duration_s if settings.duration_s else None
    vehicles = []
    for index in range(settings.vehicles):
        creds = settings.credentials[index % len(settings.credentials)]
        vehicles.append(_Vehicle(index, creds, contexts[creds], settings, result))
    result.elapsed_s = await run_devices(
        [vehicle.run(deadline) for vehicle in vehicles],
        lambda: (
            result.frames_sent,
            result.frames_acked,
            result.error_replies + result.connection_errors + result.unexpected_replies,
        ),
        settings.report_interval_s,
        report,
    )
    return result
