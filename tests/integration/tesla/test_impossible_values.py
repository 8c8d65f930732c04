"""A payload time that cannot be a time, over a real mTLS WebSocket: refused and counted."""

from __future__ import annotations

import pytest

from fleetgate.app import Server
from fleetgate.observability import metrics
from fleetgate.pki import DevPki
from fleetgate.protocols.tesla.envelope import ERROR_TEXT, MESSAGE_STREAM, MESSAGE_STREAM_ACK
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from tests.integration.tesla.helpers import connect_vehicle, receive, stream_frame

pytestmark = pytest.mark.integration


def refused(reason: str) -> float:
    labels = {"reason": reason}
    return metrics.REGISTRY.get_sample_value("fleetgate_tesla_frames_refused_total", labels) or 0.0


async def test_created_at_past_year_9999_gets_the_error_reply(server: Server, pki: DevPki) -> None:
    before = refused("impossible_time")
    payload = vd.Payload()
    payload.data.add(key=vd.VehicleSpeed).value.string_value = "16.0"
    payload.created_at.seconds = 10**17
    async with await connect_vehicle(server, pki) as ws:
        await ws.send(stream_frame(txid="poison", payload=payload.SerializeToString()))
        reply = await receive(ws)
        await ws.send(stream_frame(txid="good"))
        ack = await receive(ws)
    assert (reply.message_type, reply.txid) == (MESSAGE_STREAM, b"poison")
    assert reply.stream is not None
    assert reply.stream.payload == ERROR_TEXT
    assert (ack.message_type, ack.txid) == (MESSAGE_STREAM_ACK, b"good")
    assert refused("impossible_time") == before + 1
