"""The Teltonika ingest path in one process, stage by stage, for instruction counts.

Wall-clock timings move with whatever else the machine runs; instruction counts under
``valgrind --tool=callgrind`` do not. Each stage runs ``--frames`` times over pre-encoded
frames (10 records of codec 8E with 10 IO elements, 1,000 devices, as bench/ingest_teltonika.py
sends); running a stage twice with different frame counts and subtracting gives the
instructions one record costs in that stage, start-up excluded:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python \\
        bench/hotpath.py decode --frames 200     # and --frames 1200; see --measure

``--measure`` does exactly that and prints instructions per record per stage, less what
making the test frames costs (the ``frames`` stage). Stages include the ones before them:
``append`` is decode + append, and so on.

Stages: ``decode`` (TCP framing, CRC, codec, Records), ``listener`` (decode inside the TCP
listener's sessions: events, the worker task, the ack write, metrics; a pipeline that takes
every frame at once), ``session`` (the listener's sessions over the real pipeline with its
spool, written without fsync by its commit thread, and no store: everything between the
socket and the ack but the disk), ``append`` (the pipeline taking a
frame: spool encoding, offsets, routing), ``store`` (the SQLite store writing a batch),
``accept`` (everything in one event loop: decode, append, the spool's group commit, the
store, the ack decision).
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import callgrind  # noqa: E402 - bench/callgrind.py, next to this script

from fleetgate.protocols.teltonika.connection import TcpConnection  # noqa: E402
from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei  # noqa: E402
from fleetgate.protocols.teltonika.events import AvlFrame  # noqa: E402
from fleetgate.protocols.teltonika.model import CODEC_8E, AvlRecord  # noqa: E402
from fleetgate.protocols.teltonika.records import to_records  # noqa: E402
from fleetgate.records import Record  # noqa: E402

DEVICES = 1000
RECORDS_PER_FRAME = 10
RECEIVED_AT = 1_767_225_600_000


def frames(count: int) -> list[tuple[str, bytes]]:
    rng = random.Random(7)
    out = []
    stamp = RECEIVED_AT - 10**9
    for n in range(count):
        records = []
        for _ in range(RECORDS_PER_FRAME):
            stamp += 1000
            io: dict[int, int | bytes] = {239: 1, 240: 1, 21: 4, 66: 12800, 67: 4100, 16: 123456}
            for extra in range(1000, 1004):
                io[extra] = rng.randrange(0, 200)
            records.append(AvlRecord(stamp, 0, 25.28, 54.69, 100, rng.randrange(360), 10,
                                     rng.randrange(120), 0, io))
        out.append((f"35630704{n % DEVICES:07d}", encode_avl_frame(CODEC_8E, records)))
    return out


def decode_each(pairs: list[tuple[str, bytes]]) -> Iterator[list[Record]]:
    """Each frame's records, decoded as a connection of its tracker would (one per IMEI)."""
    connections: dict[str, TcpConnection] = {}
    for imei, frame in pairs:
        connection = connections.get(imei)
        if connection is None:
            connection = connections[imei] = TcpConnection()
            connection.receive_data(encode_imei(imei))
            connection.accept_imei(True)
        for event in connection.receive_data(frame):
            if isinstance(event, AvlFrame):
                yield to_records(imei, event, RECEIVED_AT)


def decoded(pairs: list[tuple[str, bytes]]) -> list[list[Record]]:
    return list(decode_each(pairs))


def stage_frames(count: int) -> None:
    frames(count)  # the test data alone: subtracted from the other stages


def stage_decode(count: int) -> None:
    decoded(frames(count))


class _Round:
    """Acks still awaited in one round of frames."""

    def __init__(self) -> None:
        self.waiting = 0
        self.done = asyncio.Event()


class _Transport:
    """The little of a transport a Teltonika session uses; keeps what it was sent."""

    def __init__(self, peer: tuple[str, int], round_: _Round) -> None:
        self.peer = peer
        self.round = round_
        self.sent: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        if len(data) == 4:  # an ack
            self.round.waiting -= 1
            if not self.round.waiting:
                self.round.done.set()

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool:
        return False


class _AcceptAll:
    """A pipeline that takes every frame at once: the session's own work, measured alone."""

    async def accept(self, records: list[Record]) -> bool:
        return True

    async def accept_then(self, records: list[Record], answer: Callable[[bool], None]) -> None:
        answer(True)

    def accept_now(self, records: list[Record], answer: Callable[[bool], None]) -> bool:
        answer(True)  # the sessions hand a frame over here first (Pipeline.accept_now)
        return True


def stage_listener(count: int) -> None:
    _sessions(frames(count), _AcceptAll())


def stage_session(count: int) -> None:
    pairs = frames(count)
    with tempfile.TemporaryDirectory() as directory:
        pipeline = _pipeline(Path(directory), store=False)
        _sessions(pairs, pipeline)


def _sessions(pairs: list[tuple[str, bytes]], pipeline: object) -> None:
    """Every frame of ``pairs`` through the TCP listener's sessions into ``pipeline``
    (started and closed here if it is a real one), round by round, each ack checked."""
    import uvloop

    from fleetgate.config import build_config
    from fleetgate.listeners.teltonika.tcp import TeltonikaListener, TeltonikaSession
    from fleetgate.pipeline import Pipeline

    real = isinstance(pipeline, Pipeline)

    async def run() -> None:
        if real:
            await pipeline.start()  # type: ignore[attr-defined]
        config = build_config({}, environ={})
        listener = TeltonikaListener(config.teltonika, pipeline)  # type: ignore[arg-type]
        sessions: dict[str, tuple[TeltonikaSession, _Transport]] = {}
        round_ = _Round()
        for n in range(DEVICES):
            imei = f"35630704{n:07d}"
            session = TeltonikaSession(listener)
            transport = _Transport(("127.0.0.1", 10_000 + n), round_)
            session.connection_made(transport)  # type: ignore[arg-type]
            session.data_received(encode_imei(imei))
            sessions[imei] = (session, transport)
        await asyncio.sleep(0.01)  # every IMEI accepted
        for start in range(0, len(pairs), DEVICES):  # a round: every device sends one frame
            sending = [sessions[imei] for imei, _ in pairs[start : start + DEVICES]]
            round_.waiting = len(sending)
            round_.done.clear()
            for (session, _), (_, frame) in zip(sending, pairs[start : start + DEVICES],
                                                strict=True):
                session.data_received(frame)
            await asyncio.wait_for(round_.done.wait(), 600)  # a lost ack fails, not hangs
            for _, transport in sending:
                assert transport.sent.pop() == RECORDS_PER_FRAME.to_bytes(4, "big")
        for session, _ in sessions.values():
            session.abort()
        if real:
            await pipeline.close()  # type: ignore[attr-defined]

    uvloop.run(run())


def _pipeline(directory: Path, store: bool = True) -> object:
    from fleetgate.app import build_pipeline
    from fleetgate.config import build_config

    config = build_config(
        {"data_dir": str(directory), "spool": {"fsync": False},
         "sink_settings": {"max_queue_records": 10**7}, "store": {"enabled": store}},
        environ={},
    )
    return build_pipeline(config)


def stage_append(count: int) -> None:
    batches = decoded(frames(count))
    with tempfile.TemporaryDirectory() as directory:
        pipeline = _pipeline(Path(directory))

        async def run() -> None:
            for records in batches:
                await pipeline.append(records)  # type: ignore[attr-defined]

        asyncio.run(run())


def stage_store(count: int) -> None:
    from fleetgate.store import RecordStore

    batches = decoded(frames(count))
    records = [record for batch in batches for record in batch]
    with tempfile.TemporaryDirectory() as directory:
        store = RecordStore(Path(directory) / "fleetgate.db")
        for start in range(0, len(records), 10_000):
            store.write(records[start : start + 10_000])
        store.close()


def stage_accept(count: int) -> None:
    pairs = frames(count)
    with tempfile.TemporaryDirectory() as directory:
        pipeline = _pipeline(Path(directory))

        async def run() -> None:
            await pipeline.start()  # type: ignore[attr-defined]
            pending = []
            for records in decode_each(pairs):  # decoded as they are taken, like a server
                pending.append(asyncio.ensure_future(
                    pipeline.accept(records)  # type: ignore[attr-defined]
                ))
                if len(pending) >= DEVICES:  # a round: every device one frame in flight
                    assert all(await asyncio.gather(*pending))
                    pending = []
            assert all(await asyncio.gather(*pending))
            await pipeline.close()  # type: ignore[attr-defined]

        asyncio.run(run())


STAGES = {"frames": stage_frames, "decode": stage_decode, "listener": stage_listener,
          "session": stage_session, "append": stage_append, "store": stage_store,
          "accept": stage_accept}


def main() -> int:
    return callgrind.main(
        __file__, (__doc__ or "").split("\n")[0], STAGES, default_frames=1000,
        sizes=(200, 1200), units_per_frame=RECORDS_PER_FRAME, unit="record",
    )


if __name__ == "__main__":
    sys.exit(main())
