"""Frames taken straight from the connection's data_received (VehicleSession.take_now) are
handled exactly as the read loop handles them: same records in the same order, same
replies and acks byte for byte, the in-flight limit and a pipeline that must wait
included."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from fleetgate.config import build_config
from fleetgate.listeners.tesla.oversize import VehicleConnection
from fleetgate.listeners.tesla.session import MAX_IN_FLIGHT, SessionSettings, VehicleSession
from fleetgate.listeners.tesla.writer import server_binary_frame
from fleetgate.protocols.tesla.envelope import build_ack
from fleetgate.protocols.tesla.identity import VehicleIdentity
from fleetgate.protocols.tesla.ratelimit import rate_limit_settings
from fleetgate.records import Record
from fleetgate.sim.tesla import TOPIC, VehicleModel, build_vehicle_frame

VIN = "5YJ3E1EA7KF000001"
Answer = Callable[[bool], None]


class Pipeline:
    """Takes every frame's records; answers at once, or later, or makes some frames wait."""

    def __init__(self, *, answer_at_once: bool = True, waits: Sequence[int] = ()) -> None:
        self.answer_at_once = answer_at_once
        self.waits = set(waits)  # numbers of the frames accept_now refuses (no room)
        self.calls = 0
        self.records: list[Record] = []
        self.unanswered: list[Answer] = []

    def _take(self, records: Sequence[Record], answer: Answer) -> None:
        self.records.extend(records)
        if self.answer_at_once:
            answer(True)
        else:
            self.unanswered.append(answer)

    def accept_now(self, records: Sequence[Record], answer: Answer) -> bool:
        number = self.calls
        self.calls += 1
        if number in self.waits:
            return False
        self._take(records, answer)
        return True

    async def accept_then(self, records: Sequence[Record], answer: Answer) -> None:
        await asyncio.sleep(0)  # room comes a loop step later
        self._take(records, answer)

    async def submit(self, records: Sequence[Record]) -> None:
        self.records.extend(records)  # connectivity records


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class NoHandlerServer:
    """What connection_made uses of websockets' server (a handler that does nothing)."""

    def __init__(self) -> None:
        self.handler_tasks: set[asyncio.Task[None]] = set()

    async def handler(self, connection: VehicleConnection) -> None:
        pass


class Counting(VehicleSession):
    """Counts the frames take_now took; ``direct=False`` leaves every frame to the loop."""

    direct = True
    taken = 0

    def take_now(self, message: bytes) -> bool:
        if not self.direct:
            return False
        taken = super().take_now(message)
        self.taken += taken
        return taken


class Vehicle:
    def __init__(self, pipeline: Pipeline, *, direct: bool) -> None:
        limit = rate_limit_settings(build_config({}, environ={}).rate_limit)
        protocol = ServerProtocol(state=OPEN, max_size=1_000_000)
        self.conn = VehicleConnection(
            protocol,
            NoHandlerServer(),  # type: ignore[arg-type]
            ping_interval=None,
        )
        self.transport = Transport()
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.conn.request = Request("/", Headers())  # the handshake is done
        settings_ = SessionSettings(pipeline, None, {}, limit)  # type: ignore[arg-type]
        self.session = Counting(
            settings_, self.conn, VehicleIdentity(VIN, "vehicle_device"), "socket-1"
        )
        self.session.direct = direct
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.session.run())
        await settle()

    async def stop(self) -> None:
        await settle()
        self.conn.connection_lost(None)
        assert self.task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5)


async def settle(steps: int = 20) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)


def client(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


_MODEL = VehicleModel(VIN, random.Random(1))
_V_FRAMES = [build_vehicle_frame(_MODEL, f"tx{n:04d}", 1_767_225_500.0 + n) for n in range(8)]


def message(kind: int, n: int) -> bytes:
    """One client frame (or fragmented message) of a kind a vehicle may send."""
    if kind == 0:
        return client(Opcode.BINARY, _V_FRAMES[n % len(_V_FRAMES)])
    if kind == 1:
        return client(Opcode.BINARY, b"not a flatbuffer %d" % n)  # error reply
    if kind == 2:
        return client(Opcode.PING, b"p%d" % n)
    frame = _V_FRAMES[n % len(_V_FRAMES)]  # fragmented: left to the library
    return client(Opcode.BINARY, frame[:10], fin=False) + client(Opcode.CONT, frame[10:])


def server_frames(written: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``written``."""
    out = []
    view = memoryview(written)
    pos = 0
    while pos < len(view):
        opcode, length = view[pos] & 0x0F, view[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length = int.from_bytes(view[pos : pos + 2], "big")
            pos += 2
        out.append((opcode, bytes(view[pos : pos + length])))
        pos += length
    return out


async def run(
    stream: bytes, cuts: list[int], yields: list[bool], pipeline: Pipeline, *, direct: bool
) -> tuple[Vehicle, list[tuple[int, bytes]]]:
    vehicle = Vehicle(pipeline, direct=direct)
    await vehicle.start()
    bounds = [0, *sorted(set(cuts)), len(stream)]
    assert len(yields) >= len(bounds) - 1
    for (start, end), pause in zip(itertools.pairwise(bounds), yields, strict=False):
        vehicle.conn.data_received(stream[start:end])
        if pause:
            await settle(3)
    await vehicle.stop()
    return vehicle, server_frames(bytes(vehicle.transport.written))


def summary(records: list[Record]) -> list[tuple[str, str, bytes]]:
    return [(r.topic, r.meta.get("txid", ""), r.raw) for r in records if r.topic != "connectivity"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.integers(0, 3), min_size=1, max_size=30),
    data=st.data(),
)
def test_taken_in_data_received_as_the_read_loop_takes_them(
    kinds: list[int], data: st.DataObject
) -> None:
    messages = [message(kind, n) for n, kind in enumerate(kinds)]
    stream = b"".join(messages)
    # Chunks that start where a frame does (where frames can be taken) and anywhere.
    boundaries = [sum(map(len, messages[:n])) for n in range(1, len(messages))]
    anywhere = st.integers(1, max(1, len(stream) - 1))
    cut = st.one_of(st.sampled_from(boundaries), anywhere) if boundaries else anywhere
    cuts = data.draw(st.lists(cut, max_size=8))
    yields = data.draw(st.lists(st.booleans(), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    waits = data.draw(st.lists(st.integers(0, len(kinds)), max_size=3))

    async def both() -> None:
        loop_pipe, direct_pipe = Pipeline(waits=waits), Pipeline(waits=waits)
        by_loop, loop_frames = await run(stream, cuts, yields, loop_pipe, direct=False)
        direct, direct_frames = await run(stream, cuts, yields, direct_pipe, direct=True)
        assert summary(direct_pipe.records) == summary(loop_pipe.records)
        # Replies (acks, error replies) byte for byte in the same order; pongs as many.
        assert [f for f in direct_frames if f[0] == 2] == [f for f in loop_frames if f[0] == 2]
        assert sorted(f for f in direct_frames if f[0] != 2) == sorted(
            f for f in loop_frames if f[0] != 2
        )
        assert by_loop.session.taken == 0
        assert direct.session.frames == by_loop.session.frames

    asyncio.run(both())


async def test_whole_frames_are_taken_without_the_read_loop_and_acked_in_order() -> None:
    pipeline = Pipeline()
    vehicle = Vehicle(pipeline, direct=True)
    await vehicle.start()
    vehicle.conn.data_received(b"".join(message(0, n) for n in range(8)))
    assert vehicle.session.taken == 8  # all in that call
    assert len(summary(pipeline.records)) == 8
    await vehicle.stop()
    acks = [payload for _, payload in server_frames(bytes(vehicle.transport.written))]
    assert acks == [build_ack(f"tx{n:04d}".encode(), TOPIC.encode()) for n in range(8)]
    # the bytes on the wire: each ack as its own server frame
    assert bytes(vehicle.transport.written) == b"".join(server_binary_frame(a) for a in acks)


async def test_at_most_max_in_flight_frames_wait_for_the_pipeline() -> None:
    pipeline = Pipeline(answer_at_once=False)
    vehicle = Vehicle(pipeline, direct=True)
    await vehicle.start()
    extra = 5
    vehicle.conn.data_received(b"".join(message(0, n) for n in range(MAX_IN_FLIGHT + extra)))
    await settle()
    assert len(summary(pipeline.records)) == MAX_IN_FLIGHT  # the rest wait in the queue
    assert vehicle.session.taken == MAX_IN_FLIGHT
    for answer in pipeline.unanswered[:extra]:
        answer(True)
    await settle()
    assert len(summary(pipeline.records)) == MAX_IN_FLIGHT + extra
    for answer in pipeline.unanswered[extra:]:
        answer(True)
    await vehicle.stop()
    acks = [payload for _, payload in server_frames(bytes(vehicle.transport.written))]
    assert acks == [
        build_ack(f"tx{n % 8:04d}".encode(), TOPIC.encode()) for n in range(MAX_IN_FLIGHT + extra)
    ]


async def test_a_frame_that_must_wait_keeps_its_place() -> None:
    # accept_now refuses the second frame (no room): it is handed over from a task, and
    # the frames after it wait for that, through the read loop.
    pipeline = Pipeline(waits=[1])
    vehicle = Vehicle(pipeline, direct=True)
    await vehicle.start()
    vehicle.conn.data_received(b"".join(message(0, n) for n in range(6)))
    await vehicle.stop()
    assert [txid for _, txid, _ in summary(pipeline.records)] == [f"tx{n:04d}" for n in range(6)]
    acks = [payload for _, payload in server_frames(bytes(vehicle.transport.written))]
    assert acks == [build_ack(f"tx{n:04d}".encode(), TOPIC.encode()) for n in range(6)]


async def test_frames_queued_for_the_read_loop_keep_their_place() -> None:
    # A fragmented message goes to the loop's queue; whole frames right behind it (before
    # the loop ran) must not overtake it.
    pipeline = Pipeline()
    vehicle = Vehicle(pipeline, direct=True)
    await vehicle.start()
    vehicle.conn.data_received(message(3, 0))
    vehicle.conn.data_received(message(0, 1) + message(0, 2))
    assert vehicle.session.taken == 0
    await settle()
    vehicle.conn.data_received(message(0, 3))
    assert vehicle.session.taken == 1  # the loop is waiting again: taken at once
    await vehicle.stop()
    assert [txid for _, txid, _ in summary(pipeline.records)] == [f"tx{n:04d}" for n in range(4)]


async def test_a_failing_take_closes_with_1011_as_a_failing_handler_does() -> None:
    pipeline = Pipeline()
    vehicle = Vehicle(pipeline, direct=True)
    await vehicle.start()

    def broken(message: bytes) -> bool:
        raise ValueError("bug")

    vehicle.conn.taker = type("Broken", (), {"take_now": staticmethod(broken)})()
    vehicle.conn.data_received(message(0, 0) + message(0, 1))
    frames = server_frames(bytes(vehicle.transport.written))
    assert frames[-1][0] == 8  # close
    assert frames[-1][1][:2] == (1011).to_bytes(2, "big")
    assert summary(pipeline.records) == []
    await vehicle.stop()
