"""The Tesla ingest path in one process, stage by stage, for instruction counts.

Wall-clock timings move with whatever else the machine runs; instruction counts under
``valgrind --tool=callgrind`` do not. Each stage runs ``--frames`` times over pre-encoded
frames: the ``V`` frames ``fleetgate bench load --tesla`` sends (the simulator's
:func:`~fleetgate.sim.tesla.build_vehicle_frame`: a real envelope around a 10-datum
``vehicle_data.Payload``), 20 vehicles, 16 frames in flight each, as masked WebSocket
frames where a stage reads the wire. Running a stage at two frame counts and subtracting
gives the instructions one frame costs in that stage, start-up excluded:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python \\
        bench/hotpath_tesla.py process --frames 640      # and --frames 3840; see --measure

Run it with ``PYTHONPATH=<tree>/src`` to measure that tree (a before/after pair runs this
same script against both). ``--measure`` does exactly that and prints instructions per frame per stage, less what
making the test frames costs (the ``frames`` stage). Stages include the ones before them:

* ``process``: ``FrameProcessor.process`` alone (envelope, protobuf, transforms, Record,
  ack bytes);
* ``session``: the WebSocket bytes of each frame fed to the listener's connection
  (``websockets`` framing, the oversize-skipping reader), the ``VehicleSession`` (rate
  limiter, metrics, processing, the ack queue) and the ack written back through the
  connection's batched writer, with a pipeline that settles every frame at once;
* ``accept``: ``session`` with the server's real pipeline (spool without fsync, the SQLite
  store in its thread): everything but TLS and the socket.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import callgrind  # bench/callgrind.py, next to this script

from fleetgate.protocols.tesla.envelope import build_ack
from fleetgate.records import Record
from fleetgate.sim.tesla import TOPIC, VehicleModel, build_vehicle_frame

VEHICLES = 20
WINDOW = 16
RECEIVED_AT = 1_767_225_600_000
NOW_S = 1_767_225_500.0


def vin(n: int) -> str:
    return f"5YJ3E1EA7KF{n:06d}"


def txid(n: int) -> str:
    return f"lg{n % WINDOW:04d}"


def frames(count: int) -> list[tuple[int, bytes]]:
    """(vehicle, frame) in rounds: every vehicle sends its WINDOW frames, then the next round.

    As ``fleetgate bench load`` does, each vehicle has one frame per window slot, made once
    and sent again each round (so making them costs next to nothing per frame).
    """
    pool = {}
    for vehicle in range(VEHICLES):
        model = VehicleModel(vin(vehicle), random.Random(vehicle))
        for slot in range(WINDOW):
            pool[vehicle, slot] = build_vehicle_frame(model, txid(slot), NOW_S + slot)
    return [((n // WINDOW) % VEHICLES, pool[(n // WINDOW) % VEHICLES, n % WINDOW])
            for n in range(count)]


def wire(pairs: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The frames as a vehicle's WebSocket sends them (binary, masked once per frame)."""
    from websockets.frames import Frame, Opcode

    masked: dict[bytes, bytes] = {}
    out = []
    for vehicle, frame in pairs:
        data = masked.get(frame)
        if data is None:
            data = masked[frame] = Frame(Opcode.BINARY, frame).serialize(mask=True,
                                                                         extensions=[])
        out.append((vehicle, data))
    return out


def stage_frames(count: int) -> None:
    wire(frames(count))  # the test data alone: subtracted from the other stages


def stage_process(count: int) -> None:
    from fleetgate.protocols.tesla.core import FrameProcessor
    from fleetgate.protocols.tesla.identity import VehicleIdentity

    pairs = frames(count)
    wire(pairs)  # as the frames stage, so that subtracting it leaves the processing
    processors = [
        FrameProcessor(VehicleIdentity(vin(n), "vehicle_device"), configured_topics=None,
                       socket_id=f"socket-{n}", device_client_version="1.0.0")
        for n in range(VEHICLES)
    ]
    for vehicle, frame in pairs:
        result = processors[vehicle].process(frame, RECEIVED_AT)
        assert result.ack_reply is not None
        assert len(result.records) == 1


class _Ledger:
    async def wait(self, offset: int, requirement: object) -> bool:
        return True


class _SettleAll:
    """A pipeline that settles every frame at once: the listener's own work, measured alone."""

    def __init__(self) -> None:
        self.ledger = _Ledger()
        self.head = 0

    async def append(self, records: Sequence[Record]) -> int:
        self.head += len(records)
        return self.head

    def requirement_for(self, records: Sequence[Record]) -> tuple[()]:
        return ()

    async def submit(self, records: Sequence[Record]) -> None:
        await self.append(records)

    def accept_now(self, records: Sequence[Record], answer: Any) -> bool:
        self.head += len(records)
        answer(True)
        return True

    async def accept_then(self, records: Sequence[Record], answer: Any) -> None:
        self.accept_now(records, answer)


class _Transport(asyncio.Transport):
    """The little of a transport a websockets connection uses; counts the acks written."""

    def __init__(self, ack_size: int) -> None:
        super().__init__()
        self.ack_size = ack_size
        self.acks = 0
        self.room = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert len(data) % self.ack_size == 0, bytes(data)
        self.acks += len(data) // self.ack_size
        self.room.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40_000) if name in ("peername", "sockname") else default

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

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _run_sessions(count: int, pipeline: Any, *, real: bool = False) -> None:
    import logging

    from websockets.asyncio.connection import Connection
    from websockets.datastructures import Headers
    from websockets.http11 import Request
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from fleetgate.config import build_config
    from fleetgate.listeners.tesla.oversize import VehicleConnection
    from fleetgate.listeners.tesla.session import SessionSettings, VehicleSession
    from fleetgate.protocols.tesla.identity import VehicleIdentity
    from fleetgate.protocols.tesla.ratelimit import rate_limit_settings

    pairs = wire(frames(count))
    ack_size = len(build_ack(txid(0).encode(), TOPIC.encode())) + 2  # + the WebSocket header
    # The server's default rate limit (metrics only) and store: every topic dispatched.
    limit = rate_limit_settings(build_config({}, environ={}).rate_limit)
    settings = SessionSettings(pipeline, None, {}, limit)

    async def run() -> None:
        if real:
            await pipeline.start()  # its tasks belong to the sessions' loop
        transports = []
        sessions = []
        tasks = []
        for n in range(VEHICLES):
            protocol = ServerProtocol(max_size=1_000_000, state=State.OPEN,
                                      logger=logging.getLogger("bench"))
            connection = VehicleConnection(protocol, None, ping_interval=None)  # type: ignore[arg-type]
            transport = _Transport(ack_size)
            # Connection's, not ServerConnection's (which would start serve()'s handler).
            Connection.connection_made(connection, transport)
            connection.request = Request("/", Headers())  # upgraded, as the listener keeps it
            session = VehicleSession(settings, connection, VehicleIdentity(vin(n), "vehicle_device"),
                                     f"socket-{n}", network_interface="wifi",
                                     client_version="1.0.0")
            transports.append(transport)
            sessions.append((connection, session))
            # The read loop (run() itself since the loop was merged into it; run() adds
            # one connectivity record per vehicle, which the two frame counts cancel out).
            serve = getattr(session, "_read_loop", None) or session.run
            tasks.append(asyncio.create_task(serve()))
        await asyncio.sleep(0)
        expected = [0] * VEHICLES
        for start in range(0, len(pairs), WINDOW * VEHICLES):  # a round: every window once
            for vehicle, data in pairs[start : start + WINDOW * VEHICLES]:
                sessions[vehicle][0].data_received(data)
                expected[vehicle] += 1
            for transport, want in zip(transports, expected, strict=True):
                while transport.acks < want:
                    transport.room.clear()
                    await transport.room.wait()
        for connection, _ in sessions:
            connection.connection_lost(None)  # the loops end (run() without a close wait)
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if real:
            await pipeline.close()

    import uvloop

    uvloop.run(run())


def stage_session(count: int) -> None:
    _run_sessions(count, _SettleAll())


def stage_accept(count: int) -> None:
    from fleetgate.app import build_pipeline
    from fleetgate.config import build_config

    with tempfile.TemporaryDirectory() as directory:
        config = build_config(
            {"data_dir": str(directory), "spool": {"fsync": False},
             "sink_settings": {"max_queue_records": 10**7}},
            environ={},
        )
        _run_sessions(count, build_pipeline(config), real=True)


STAGES = {"frames": stage_frames, "process": stage_process, "session": stage_session,
          "accept": stage_accept}


def main() -> int:
    return callgrind.main(
        __file__, (__doc__ or "").split("\n")[0], STAGES, default_frames=3200,
        sizes=(640, 3840), units_per_frame=1, unit="frame",
    )


if __name__ == "__main__":
    sys.exit(main())
