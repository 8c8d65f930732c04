"""Tesla vehicles for the load generator: mTLS WebSocket (picows), a window of frames.

Frames are pre-encoded per VIN with the simulator's :func:`~fleetgate.sim.tesla.build_vehicle_frame`
(a real envelope around a ``vehicle_data.Payload``): one frame per window slot, whose txid
is the slot's (``lg0000``, ``lg0001``, ...), so a slot's frame is resent each time the slot
is free again; txids are unique among the frames in flight on a connection, which is all
the protocol asks. Each send carries a fresh payload ``created_at``, one second after the
vehicle's previous frame (:class:`~fleetgate.sim.restamp.StampedVehicleFrame`): resending
the pool's fixed times would put every commit into the middle of the store's per-vehicle
history, which no real car does (the same artefact halved long Teltonika runs).

Every ack the server can send is therefore known up front: the ack of slot ``n`` is
:func:`~fleetgate.protocols.tesla.envelope.build_ack` of its txid and topic (the reference
server's exact bytes), and an answer is matched with one dict lookup on its bytes. Only an
answer that is not a known ack is parsed, to tell an error reply (its txid frees the slot)
from something unexpected.

The client is picows (a Cython WebSocket layer): per frame it costs a few microseconds,
where the ``websockets`` client the simulator uses costs tens, and the generator must be
cheaper than the server it drives. Several vehicles may share one certificate (and so
one VIN) when fewer certificates than vehicles are given.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Final

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from fleetgate.protocols.tesla.envelope import (
    MESSAGE_STREAM,
    EnvelopeError,
    build_ack,
    parse_envelope,
)
from fleetgate.sim.load.device import PacedDevice
from fleetgate.sim.load.stats import ProtocolStats
from fleetgate.sim.restamp import StampedVehicleFrame, VehicleClock
from fleetgate.sim.tesla import TOPIC, VehicleModel, build_vehicle_frame

HEADERS: Final = {
    "X-Network-Interface": "wifi",
    "Version": "1.0.0",
    "User-Agent": "fleetgate-bench/load (vehicle_device)",
}


def slot_txid(slot: int) -> bytes:
    return f"lg{slot:04d}".encode()


def frame_pool(vin: str, window: int, seed: int) -> list[StampedVehicleFrame]:
    """One ``V`` frame per window slot, each with its slot's txid."""
    model = VehicleModel(vin, random.Random(seed))
    start = int(time.time()) + 0.5  # half a second: the nanos' varint keeps one length
    frames = []
    for slot in range(window):
        now_s = start + slot
        frame = build_vehicle_frame(model, slot_txid(slot).decode(), now_s)
        frames.append(StampedVehicleFrame.locate(frame, int(now_s * 1e9)))
    return frames


def ack_slots(window: int) -> dict[bytes, int]:
    """The exact bytes of the ack for each slot's frame → the slot."""
    return {build_ack(slot_txid(slot), TOPIC.encode()): slot for slot in range(window)}


def txid_slots(window: int) -> dict[bytes, int]:
    return {slot_txid(slot): slot for slot in range(window)}


class Vehicle(WSListener, PacedDevice):
    """One vehicle's WebSocket connection."""

    def __init__(
        self,
        frames: Sequence[StampedVehicleFrame],
        acks: Mapping[bytes, int],
        txids: Mapping[bytes, int],
        stats: ProtocolStats,
        *,
        window: int,
        interval_s: float,
    ) -> None:
        WSListener.__init__(self)
        PacedDevice.__init__(self, stats, window=window, interval_s=interval_s)
        self.frames = frames
        self.acks = acks
        self.txids = txids
        self.clock = VehicleClock(int(time.time()))
        self.transport: WSTransport | None = None

    # -- picows callbacks ------------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.alive = True

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.BINARY:
            self.answer(frame.get_payload_as_bytes())
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()
        elif frame.msg_type is not WSMsgType.PONG:
            self.stats.unexpected_replies += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.lost()

    def answer(self, data: bytes) -> None:
        """A binary frame from the server: a known ack, an error reply, or unexpected."""
        slot = self.acks.get(data)
        if slot is not None:
            self.acked(slot, 1)
            return
        try:
            envelope = parse_envelope(data)
        except EnvelopeError:
            self.stats.unexpected_replies += 1
            return
        slot = self.txids.get(envelope.txid)
        if envelope.message_type == MESSAGE_STREAM and slot is not None:
            self.refused(slot)
        else:
            self.stats.unexpected_replies += 1

    # -- PacedDevice ----------------------------------------------------------------------------
    def write_frame(self, slot: int) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.BINARY, self.clock.stamp(self.frames[slot]))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and self.alive:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


async def connect_vehicle(
    url: str, context: ssl.SSLContext, vehicle: Vehicle, timeout_s: float
) -> bool:
    """Open the vehicle's connection (TLS with its certificate, WebSocket upgrade)."""
    try:
        async with asyncio.timeout(timeout_s):
            await ws_connect(
                lambda: vehicle,
                url,
                ssl_context=context,
                extra_headers=HEADERS,
                websocket_handshake_timeout=timeout_s,
                max_frame_size=2**21,
            )
    except Exception as exc:  # picows raises its own handshake errors too
        vehicle.stats.connect_failures += 1
        vehicle.stats.note(exc)
        return False
    vehicle.stats.connected += 1
    return True
