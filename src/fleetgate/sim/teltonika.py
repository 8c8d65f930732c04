"""Simulated Teltonika trackers: IMEI handshake, AVL frames, a check of every ack, and
answers to commands, like a device.

Each tracker drives a random walk from a start point, packs ``records_per_frame`` records
into one codec 7 / 8 / 8E / 16 frame with the protocol core's encoder (optionally with a
16-byte IO group, as older FM devices send), sends it, and waits for the ack, which must
equal the number of records in the frame. The simulator reuses the server's own encoder,
so a decoder bug shows up as a mismatch on the wire rather than hiding in both halves.

Over TCP (default) a reader task per tracker separates what the server sends: u32 acks go
to the sender, codec 12 / 14 command frames are answered at once like a device would
(:func:`answer_command`: ``getinfo``, ``getver``, ``getstatus``, ``getgps``, ``getio``;
codec 14 with another IMEI gets a nACK). Over UDP each datagram carries the IMEI and an
AVL packet id; a datagram whose ack does not come within ``resend_after_s`` is resent
(up to ``udp_resends`` times) exactly as a tracker does, and the 7-byte ack must echo
both packet ids and the record count.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fleetgate.protocols.teltonika import DecodedFrame, TeltonikaDecodeError, decode_frame
from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei
from fleetgate.protocols.teltonika.gh3000 import ANGLE_STEP, shortest_float32
from fleetgate.protocols.teltonika.gprs import TYPE_COMMAND, encode_response
from fleetgate.protocols.teltonika.model import (
    CODEC_7,
    CODEC_8,
    CODEC_8E,
    CODEC_12,
    CODEC_14,
    CODEC_16,
    AvlRecord,
    Gh3000Record,
)
from fleetgate.protocols.teltonika.udp import encode_udp_datagram
from fleetgate.records import format_rfc3339_ms
from fleetgate.sim.failures import describe
from fleetgate.sim.pacing import paced
from fleetgate.sim.report import run_devices

CODECS = {"7": CODEC_7, "8": CODEC_8, "8E": CODEC_8E, "8e": CODEC_8E, "16": CODEC_16}
TRANSPORTS = ("tcp", "udp")
FIRST_IMEI = 356307042441013
FIRMWARE = "03.27.07_00"
HARDWARE = "FMB920"


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
    transport: str = "tcp"
    # Add a 16-byte IO group to every record (codecs 8, 8E, 16), as older FM devices do.
    io16_group: bool = False
    # UDP: resend a datagram whose ack has not come after this long, this many times.
    resend_after_s: float = 2.0
    udp_resends: int = 3
    # After the last frame, keep TCP connections open this long to answer commands.
    linger_s: float = 0.0
    # TCP failover, like a tracker with backup servers: tracker i starts on servers[i % n]
    # and, when its connection is lost, connects to the next one and sends the frame that
    # had no ack again. Empty: (host, port) only, and a lost connection ends the tracker.
    servers: tuple[tuple[str, int], ...] = ()
    # With servers: give up when no server took a connection for this long.
    failover_timeout_s: float = 30.0

    @property
    def targets(self) -> tuple[tuple[str, int], ...]:
        return self.servers or ((self.host, self.port),)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {self.codec!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be tcp or udp, not {self.transport!r}")
        if self.io16_group and CODECS[self.codec] == CODEC_7:
            raise ValueError("codec 7 (GH3000) has no 16-byte IO group")
        if self.servers and self.transport != "tcp":
            raise ValueError("failover servers are for TCP trackers")


@dataclass(slots=True)
class SimulationResult:
    records_sent: int = 0
    records_acked: int = 0
    frames_sent: int = 0
    frames_acked: int = 0
    ack_mismatches: int = 0
    handshake_failures: int = 0
    connection_errors: int = 0
    resends: int = 0
    commands_answered: int = 0
    # TCP failover: connections made again to another server after one was lost.
    reconnects: int = 0
    elapsed_s: float = 0.0
    sent: dict[str, list[AvlRecord]] = field(default_factory=dict)
    # Why connections failed: reason -> count (see fleetgate.sim.failures).
    failures: Counter[str] = field(default_factory=Counter)

    def failed(self, exc: BaseException, target: str) -> None:
        self.connection_errors += 1
        self.failures[describe(exc, target)] += 1

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
            f"connection errors={self.connection_errors} resends={self.resends} "
            f"commands answered={self.commands_answered} "
            + (f"reconnects={self.reconnects} " if self.reconnects else "")
            + f"elapsed={self.elapsed_s:.1f}s "
            f"({rate:,.0f} records/s acked)"
        )


class TrackerModel:
    """A tracker's moving state: position, heading, odometer, inputs."""

    def __init__(self, imei: str, rng: random.Random, settings: SimulationSettings) -> None:
        self.imei = imei
        self.rng = rng
        self.codec = CODECS[settings.codec]
        self.io16_group = settings.io16_group
        self.io_elements = settings.io_elements
        self.latitude = 54.68 + rng.uniform(-0.2, 0.2)
        self.longitude = 25.28 + rng.uniform(-0.2, 0.2)
        self.heading = rng.uniform(0, 360)
        self.speed = 0
        self.altitude = 120
        self.satellites = 0
        self.odometer = rng.randrange(1_000_000, 50_000_000)
        self.started_ms = int(time.time() * 1000)
        self.timestamp_ms = self.started_ms - 3_600_000

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
        self.speed = speed
        self.altitude = rng.randrange(80, 200)
        self.satellites = rng.randrange(6, 16)
        if self.codec == CODEC_7:
            return self._gh3000_record()
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
        self._pad(io, extra_id)
        if self.io16_group:
            # One 16-byte value (an id no table names); the encoder puts it in the group.
            io[extra_id + 500 if self.codec != CODEC_8 else 140] = rng.randbytes(16)
        return AvlRecord(
            timestamp_ms=self.timestamp_ms,
            priority=0,
            longitude=round(self.longitude, 7),
            latitude=round(self.latitude, 7),
            altitude=self.altitude,
            angle=int(self.heading),
            satellites=self.satellites,
            speed=speed,
            event_io_id=0,
            io=io,
            generation_type=5 if self.codec == CODEC_16 else None,
        )

    def _gh3000_record(self) -> Gh3000Record:
        """A GH3000 record: float32 coordinates, 360/256-degree angle, whole seconds."""
        rng = self.rng
        io: dict[int, int | bytes] = {
            240: 1 if self.speed else 0,  # movement
            1: rng.randrange(20, 101),  # battery level, %
            67: rng.randrange(3_600, 4_200),  # battery voltage, mV
            5: (self.timestamp_ms - self.started_ms) // 1000 + 3600,  # uptime, s
        }
        self._pad(io, 150)
        return Gh3000Record(
            timestamp_ms=self.timestamp_ms - self.timestamp_ms % 1000,
            priority=0,
            longitude=shortest_float32(self.longitude),
            latitude=shortest_float32(self.latitude),
            altitude=self.altitude,
            angle=int(self.heading / ANGLE_STEP) * ANGLE_STEP,
            satellites=self.satellites,
            speed=min(self.speed, 255),
            event_io_id=0,
            io=io,
            gps_mask=0x7F,  # position, altitude, angle, speed, satellites, cell, signal
            lac=1,
            cell_id=rng.randrange(1, 0xFFFF),
            signal_quality=rng.randrange(0, 32),
        )

    def _pad(self, io: dict[int, int | bytes], extra_id: int) -> None:
        while len(io) < self.io_elements:
            io[extra_id] = self.rng.randrange(0, 200)
            extra_id += 1
        while len(io) > self.io_elements:
            io.popitem()

    def encode_frame(self, records: list[AvlRecord]) -> bytes:
        return encode_avl_frame(self.codec, records, io16_group=self.io16_group)

    def encode_datagram(self, records: list[AvlRecord], packet_id: int, avl_id: int) -> bytes:
        return encode_udp_datagram(
            self.imei, self.codec, records, packet_id=packet_id, avl_packet_id=avl_id,
            io16_group=self.io16_group,
        )

    def reply_to(self, command: str) -> str:
        """What this tracker answers to ``command`` (text of a codec 12/14 command)."""
        name = command.strip().split(" ", 1)[0].lower()
        now = format_rfc3339_ms(int(time.time() * 1000))
        if name == "getinfo":
            return (
                f"INI:{format_rfc3339_ms(self.started_ms)} RTC:{now} RST:0 ERR:0 SR:0 BR:0 "
                f"CF:0 FG:0 FL:0 TU:0/0 UT:0 SMS:0 NOGPS:0:0 GPS:1 SAT:{self.satellites} "
                "RS:3 RF:0 SF:1 MD:0"
            )
        if name == "getver":
            uptime = (int(time.time() * 1000) - self.started_ms) // 1000
            return (
                f"Ver:{FIRMWARE} GPS:AXN_5.1.9 Hw:{HARDWARE} Mod:15 IMEI:{self.imei} "
                f"Init:{format_rfc3339_ms(self.started_ms)} Uptime:{uptime} BL:1.10"
            )
        if name == "getstatus":
            return (
                "Data Link: 1 GPRS: 1 Phone: 0 SIM: 0 OP: 24602 Signal: 5 NewSMS: 0 "
                "Roaming: 0 SMSFull: 0 LAC: 1 Cell ID: 3055 NetType: 1 FwUpd:-7"
            )
        if name == "getgps":
            return (
                f"GPS:1 Sat:{self.satellites} Lat:{self.latitude:.6f} "
                f"Long:{self.longitude:.6f} Alt:{self.altitude} Speed:{self.speed} "
                f"Dir:{int(self.heading)} Date: {now[:10]} Time: {now[11:19]}"
            )
        if name == "getio":
            return "DI1:1 DI2:0 DI3:0 AIN1:0 AIN2:0 DO1:0 DO2:0"
        return f"Unknown command: {command.strip()[:64]}"


def answer_command(frame: bytes, model: TrackerModel) -> bytes | None:
    """The device's answer to one server → device frame, or None (not a command for us).

    Codec 12 commands get a codec 12 response. Codec 14 commands get an ACK with the
    response when their IMEI is the tracker's, else a nACK, as the firmware does.
    """
    try:
        decoded: DecodedFrame = decode_frame(frame)
    except TeltonikaDecodeError:
        return None
    if decoded.kind != "gprs" or not decoded.crc_ok or not decoded.messages:
        return None
    message = decoded.messages[0]
    if message.type != TYPE_COMMAND:
        return None
    text = message.payload.decode("ascii", "replace")
    if message.codec == CODEC_12:
        return encode_response(model.reply_to(text))
    if message.codec == CODEC_14:
        if message.imei != model.imei:
            return encode_response(b"", codec=CODEC_14, imei=model.imei, nack=True)
        return encode_response(model.reply_to(text), codec=CODEC_14, imei=model.imei)
    return None


async def _read_from_server(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    model: TrackerModel,
    acks: asyncio.Queue[int | None],
    result: SimulationResult,
) -> None:
    """Split the server's bytes: u32 acks to ``acks``, command frames answered at once.

    An ack is four bytes that are not all zero (the server acks at least one record); a
    frame starts with the zero preamble. ``None`` in ``acks`` means the connection ended.
    """
    try:
        while True:
            head = await reader.readexactly(4)
            if head != b"\x00\x00\x00\x00":
                acks.put_nowait(int.from_bytes(head, "big"))
                continue
            length = await reader.readexactly(4)
            rest = await reader.readexactly(int.from_bytes(length, "big") + 4)
            reply = answer_command(head + length + rest, model)
            if reply is not None:
                writer.write(reply)
                result.commands_answered += 1
    except (OSError, asyncio.IncompleteReadError):
        acks.put_nowait(None)


class _ConnectionLostError(ConnectionResetError):
    """The server closed the connection (failover moves to the next server)."""


@dataclass(slots=True)
class _TrackerState:
    """What a TCP tracker carries from one connection to the next: its send schedule and
    the frame sent and not acked yet (sent again after a reconnect)."""

    schedule: AsyncIterator[int]
    frames: int = 0
    pending: bytes | None = None
    pending_records: int = 0


async def _run_tcp_tracker(
    index: int,
    settings: SimulationSettings,
    result: SimulationResult,
    deadline: float | None,
) -> None:
    imei = str(settings.first_imei + index)
    rng = random.Random(None if settings.seed is None else settings.seed + index)
    model = TrackerModel(imei, rng, settings)
    targets = settings.targets
    failover = bool(settings.servers)
    state = _TrackerState(
        paced(_interval(settings), settings.frames_per_device, deadline, rng)
    )
    attempt = index
    lost_since: float | None = None
    while True:
        host, port = targets[attempt % len(targets)]
        target = f"{host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), settings.ack_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            now = time.monotonic()
            lost_since = now if lost_since is None else lost_since
            if not failover or now - lost_since > settings.failover_timeout_s:
                result.failed(exc, target)
                return
            attempt += 1
            await asyncio.sleep(0.1 if attempt % len(targets) else 0.5)
            continue
        if lost_since is not None or state.frames or state.pending is not None:
            result.reconnects += 1
        lost_since = None
        try:
            await _tcp_session(reader, writer, model, settings=settings, result=result, state=state)
            return
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError):
                exc = ConnectionResetError("server closed the connection")
            # An ack that never comes is no lost connection: failover does not hide it.
            if not failover or isinstance(exc, TimeoutError):
                result.failed(exc, target)
                return
            lost_since = time.monotonic()
            attempt += 1


async def _tcp_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    model: TrackerModel,
    *,
    settings: SimulationSettings,
    result: SimulationResult,
    state: _TrackerState,
) -> None:
    """One connection: handshake, the frame without ack (if any) again, then new frames."""
    acks: asyncio.Queue[int | None] = asyncio.Queue()
    listener: asyncio.Task[None] | None = None
    per_frame = settings.records_per_frame
    try:
        writer.write(encode_imei(model.imei))
        try:
            reply = await asyncio.wait_for(reader.readexactly(1), settings.ack_timeout_s)
        except asyncio.IncompleteReadError:
            raise _ConnectionLostError("server closed the connection") from None
        if reply != b"\x01":
            result.handshake_failures += 1
            return
        listener = asyncio.create_task(_read_from_server(reader, writer, model, acks, result))
        while True:
            if state.pending is None:
                try:
                    await anext(state.schedule)
                except StopAsyncIteration:
                    break
                records = [model.next_record() for _ in range(per_frame)]
                state.pending, state.pending_records = model.encode_frame(records), per_frame
                result.frames_sent += 1
                result.records_sent += per_frame
                if settings.keep_sent:
                    result.sent.setdefault(model.imei, []).extend(records)
            else:
                result.resends += 1  # after a reconnect: the frame the last server did not ack
            writer.write(state.pending)
            count = await asyncio.wait_for(acks.get(), settings.ack_timeout_s)
            if count is None:
                raise _ConnectionLostError("server closed the connection")
            if count != state.pending_records:
                result.ack_mismatches += 1
            else:
                result.frames_acked += 1
                result.records_acked += count
            state.pending = None
            state.frames += 1
        if settings.linger_s:
            await asyncio.sleep(settings.linger_s)  # commands are still answered meanwhile
    finally:
        if listener is not None:
            listener.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _interval(settings: SimulationSettings) -> float:
    """Seconds between one tracker's frames (``rate`` is records per second; 0: no wait)."""
    return settings.records_per_frame / settings.rate if settings.rate > 0 else 0.0


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.put_nowait(data)


async def _run_udp_tracker(
    index: int,
    settings: SimulationSettings,
    result: SimulationResult,
    deadline: float | None,
) -> None:
    imei = str(settings.first_imei + index)
    rng = random.Random(None if settings.seed is None else settings.seed + index)
    model = TrackerModel(imei, rng, settings)
    loop = asyncio.get_running_loop()
    try:
        transport, client = await loop.create_datagram_endpoint(
            _UdpClient, remote_addr=(settings.host, settings.port)
        )
    except OSError as exc:
        result.failed(exc, f"udp {settings.host}:{settings.port}")
        return
    try:
        per_frame = settings.records_per_frame
        limit = settings.frames_per_device
        async for frames in paced(_interval(settings), limit, deadline, rng):
            records = [model.next_record() for _ in range(per_frame)]
            packet_id, avl_id = rng.randrange(0x10000), frames & 0xFF
            datagram = model.encode_datagram(records, packet_id, avl_id)
            result.frames_sent += 1
            result.records_sent += per_frame
            if settings.keep_sent:
                result.sent.setdefault(imei, []).extend(records)
            expected = (5).to_bytes(2, "big") + packet_id.to_bytes(2, "big") + bytes(
                (1, avl_id, per_frame)
            )
            ack = await _send_until_acked(
                transport, client, datagram, expected[:6], settings=settings, result=result
            )
            if ack is None:
                result.failed(TimeoutError(), f"udp {settings.host}:{settings.port}")
                return
            if ack != expected:
                result.ack_mismatches += 1
            else:
                result.frames_acked += 1
                result.records_acked += per_frame
    finally:
        transport.close()


async def _send_until_acked(
    transport: asyncio.DatagramTransport,
    client: _UdpClient,
    datagram: bytes,
    ack_prefix: bytes,
    *,
    settings: SimulationSettings,
    result: SimulationResult,
) -> bytes | None:
    """Send, wait for this datagram's ack, resend after ``resend_after_s`` like a tracker.

    An ack is this datagram's when it echoes its packet ids (``ack_prefix``); others (a
    late second ack of a resent earlier datagram) are skipped. None if no ack came within
    ``ack_timeout_s`` or after ``udp_resends`` resends.
    """
    give_up = time.monotonic() + settings.ack_timeout_s
    sends = 0
    while True:
        transport.sendto(datagram)
        sends += 1
        resend_at = min(time.monotonic() + settings.resend_after_s, give_up)
        while (wait := resend_at - time.monotonic()) > 0:
            try:
                reply = await asyncio.wait_for(client.replies.get(), wait)
            except TimeoutError:
                break
            if reply[:6] == ack_prefix:
                return reply
        if sends > settings.udp_resends or time.monotonic() >= give_up:
            return None
        result.resends += 1


async def run_simulation(
    settings: SimulationSettings,
    report: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> SimulationResult:
    """Run the trackers until the duration or frame count is reached (or ``stop`` is set,
    which ends a linger early); print live summaries."""
    result = SimulationResult()
    deadline = time.monotonic() + settings.duration_s if settings.duration_s else None
    run = _run_udp_tracker if settings.transport == "udp" else _run_tcp_tracker
    trackers = [run(index, settings, result, deadline) for index in range(settings.devices)]
    result.elapsed_s = await run_devices(
        trackers,
        lambda: (
            result.records_sent,
            result.records_acked,
            result.connection_errors + result.ack_mismatches,
        ),
        settings.report_interval_s,
        report,
        stop,
    )
    return result
