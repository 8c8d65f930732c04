"""The load generator's device drivers: bytes they write, answers they read.

The MQTT packets are held to what paho (the client library the rest of fleetgate uses)
writes for the same CONNECT and PUBLISH, and to the MQTT 3.1.1 spec's variable-length
integer examples. The drivers' readers must count the same acks however TCP splits or
joins the server's bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from fleetgate.protocols.teltonika import decode_frame
from fleetgate.protocols.tesla.envelope import build_error, parse_envelope
from fleetgate.sim.load import gateways, teltonika, tesla
from fleetgate.sim.load.stats import ProtocolStats


class FakeTransport:
    """What the drivers write, kept."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True


# -- MQTT packets ------------------------------------------------------------------------------
# MQTT 3.1.1, table 2.4: the boundaries of each remaining-length size.
SPEC_LENGTHS = {
    0: "00",
    127: "7f",
    128: "8001",
    16_383: "ff7f",
    16_384: "808001",
    2_097_151: "ffff7f",
    2_097_152: "80808001",
    268_435_455: "ffffff7f",
}


@pytest.mark.parametrize(("length", "encoded"), SPEC_LENGTHS.items())
def test_remaining_length_matches_the_spec(length: int, encoded: str) -> None:
    assert gateways.remaining_length(length).hex() == encoded


def test_remaining_length_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        gateways.remaining_length(268_435_456)


@pytest.mark.parametrize("payload_size", [11, 300, 20_000])
def test_connect_and_publish_bytes_are_pahos(payload_size: int) -> None:
    """paho connects to a socket of ours; what it writes must equal the pre-encoded packets."""
    topic = "vehicles/load-gw-000001/engine/rpm"
    payload = b"x" * payload_size
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id="fleetgate-load-gw",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        client.connect("127.0.0.1", server.getsockname()[1], keepalive=gateways.KEEPALIVE_S)
        peer, _ = server.accept()
        with peer:
            peer.settimeout(5)
            client.loop_write()
            assert receive(peer, len(gateways.connect_packet("fleetgate-load-gw"))) == (
                gateways.connect_packet("fleetgate-load-gw")
            )
            peer.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
            client.loop_read()
            info = client.publish(topic, payload, qos=1)
            expected = (
                gateways.publish_head(topic, len(payload))
                + gateways.packet_ids(8)[info.mid - 1]
                + payload
            )
            while client.want_write():
                client.loop_write()
            assert receive(peer, len(expected)) == expected
        client.disconnect()


def receive(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


# -- splitting the server's bytes --------------------------------------------------------------
def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def run(body: Callable[[], None]) -> None:
    async def main() -> None:
        body()

    asyncio.run(main())


@given(st.integers(1, 30), st.integers(1, 20), st.lists(st.integers(0, 10_000), max_size=40))
@settings(max_examples=60, deadline=None)
def test_tracker_counts_every_ack_however_the_bytes_arrive(
    acks: int, per_frame: int, cuts: list[int]
) -> None:
    def body() -> None:
        stats = ProtocolStats(1)
        frames = teltonika.frame_pool("8E", per_frame, 4, seed=1, first_imei=356307100000000)
        tracker = teltonika.Tracker(
            "356307100000001", frames, 0, stats, records_per_frame=per_frame, interval_s=0
        )
        transport = FakeTransport()
        tracker.connection_made(transport)  # type: ignore[arg-type]
        tracker.data_received(b"\x01")  # the handshake answer comes before any frame
        tracker.begin(0)
        for piece in chunks(per_frame.to_bytes(4, "big") * acks, cuts):
            tracker.data_received(piece)
        assert tracker.identified.result() is True
        assert stats.acked_frames == acks and stats.acked_records == acks * per_frame
        assert stats.sent_frames == acks + 1 and stats.error_replies == 0
        # IMEI, then whole AVL frames, each one the decoder reads with the right count.
        assert transport.written[0] == b"\x00\x0f356307100000001"
        times = []
        for frame in transport.written[1:]:
            decoded = decode_frame(frame)
            assert decoded.crc_ok and len(decoded.records) == per_frame
            times += [record.timestamp_ms for record in decoded.records]
        # Like a real tracker's clock: every record later than the one before.
        assert all(a < b for a, b in itertools.pairwise(times))

    run(body)


def test_tracker_counts_a_wrong_ack_as_an_error_reply() -> None:
    def body() -> None:
        stats = ProtocolStats(1)
        frames = teltonika.frame_pool("8", 2, 4, seed=1, first_imei=356307100000000)
        tracker = teltonika.Tracker(
            "356307100000001", frames, 0, stats, records_per_frame=2, interval_s=0
        )
        tracker.connection_made(FakeTransport())  # type: ignore[arg-type]
        tracker.data_received(b"\x01")
        tracker.begin(0)
        tracker.data_received((1).to_bytes(4, "big"))
        assert (stats.acked_frames, stats.error_replies, stats.sent_frames) == (0, 1, 2)

    run(body)


@given(st.integers(1, 8), st.integers(1, 40), st.lists(st.integers(0, 10_000), max_size=40))
@settings(max_examples=60, deadline=None)
def test_gateway_counts_every_puback_however_the_bytes_arrive(
    window: int, acks: int, cuts: list[int]
) -> None:
    def body() -> None:
        stats = ProtocolStats(1)
        gateway = gateways.Gateway(
            "c",
            gateways.message_pool("load-gw-000001", "vehicles", seed=3),
            gateways.packet_ids(window),
            stats,
            window=window,
            interval_s=0,
        )
        transport = FakeTransport()
        gateway.connection_made(transport)  # type: ignore[arg-type]
        gateway.data_received(b"\x20\x02\x00\x00")
        assert gateway.connack.result() == 0
        gateway.alive = True
        gateway.begin(0)
        assert stats.sent_frames == window
        # PUBACKs for packet id 1 (its slot is refilled at once), a PINGRESP among them.
        stream = b"\x40\x02\x00\x01" * acks + b"\xd0\x00" + b"\x40\x02\x00\x01"
        for piece in chunks(stream, cuts):
            gateway.data_received(piece)
        assert stats.acked_frames == acks + 1
        assert stats.unexpected_replies == 0
        assert stats.sent_frames == window + acks + 1
        assert gateway.waiting == window

    run(body)


def test_vehicle_matches_acks_by_their_bytes_and_frees_slots_on_error_replies() -> None:
    def body() -> None:
        stats = ProtocolStats(1)
        window = 4
        frames = tesla.frame_pool("5YJ3E1EA7KF000001", window, seed=1)
        # Each slot's frame carries that slot's txid.
        txids = [parse_envelope(f.frame).txid for f in frames]
        assert txids == [tesla.slot_txid(s) for s in range(4)]
        vehicle = tesla.Vehicle(
            frames,
            tesla.ack_slots(window),
            tesla.txid_slots(window),
            stats,
            window=window,
            interval_s=0,
        )
        sent: list[bytes] = []
        vehicle.write_frame = lambda slot: sent.append(frames[slot].frame)  # type: ignore[method-assign]
        vehicle.alive = True
        vehicle.begin(0)
        assert len(sent) == window
        by_slot = {slot: ack for ack, slot in tesla.ack_slots(window).items()}
        vehicle.answer(by_slot[2])
        vehicle.answer(build_error(tesla.slot_txid(3)))
        vehicle.answer(by_slot[2])  # its frame was resent: a second ack is fine
        vehicle.answer(b"not a flatbuffer")
        assert (stats.acked_frames, stats.error_replies, stats.unexpected_replies) == (2, 1, 1)
        assert stats.sent_frames == window + 3

    run(body)
