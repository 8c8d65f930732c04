"""CAN gateways for the load generator: MQTT 3.1.1 PUBLISH at QoS 1, pre-encoded.

Each gateway is one MQTT connection (clean session, client id ``fleetgate-load-<id>``)
publishing its vehicle's telemetry signals to ``<root>/<gateway-id>/<group>/<signal>``.
The pool of messages is made once per gateway from the gateway simulator's
:class:`~fleetgate.sim.can_vehicle.VehicleModel` and the core's
:func:`~fleetgate.protocols.mqtt.format_payload` (``{"value", "unit"}``: no ``ts``, so a
long run is never refused by a drift limit), and each message is encoded once as PUBLISH
bytes up to its packet identifier; a send joins that head, the slot's packet id and the
payload. Packet ids are the window slots (1..window), free again once PUBACKed.

A PUBACK is the *broker's* ack: it says the broker took the message, not that fleetgate
stored it. The report therefore calls gateway throughput "published", and fleetgate's own
count comes from its API at the end of a run.

Why not paho (which the simulator uses): its ``publish()`` alone costs about 26 µs per
message in the caller and its network loop far more; writing ready-made packets costs
about 1 µs. The packets are the few that MQTT 3.1.1 defines for this (CONNECT, CONNACK,
PUBLISH, PUBACK, PINGREQ, PINGRESP); the broker checks them, and fleetgate storing what
was sent checks the payloads.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Sequence
from typing import Final

from fleetgate.mqtt_settings import MqttIngestConfig
from fleetgate.protocols.mqtt import SIGNALS, format_payload, signal_topic
from fleetgate.sim.can_vehicle import VehicleModel
from fleetgate.sim.load.device import PacedDevice
from fleetgate.sim.load.stats import ProtocolStats

CONNECT: Final = 0x10
CONNACK: Final = 0x20
PUBLISH_QOS1: Final = 0x32
PUBACK: Final = 0x40
PINGREQ: Final = b"\xc0\x00"
PINGRESP: Final = 0xD0
KEEPALIVE_S: Final = 60
# Telemetry: the signals a gateway sends on a period (not the event signals).
TELEMETRY: Final = tuple(s for s in SIGNALS if s.period_s is not None and s.group != "gateway")
POOL_STEPS: Final = 4  # model snapshots per gateway in the pool


def remaining_length(length: int) -> bytes:
    """MQTT's variable-length integer (1-4 bytes)."""
    if not 0 <= length <= 268_435_455:
        raise ValueError(f"MQTT remaining length {length} out of range")
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, keepalive_s: int = KEEPALIVE_S) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, no will, no credentials."""
    body = _string("MQTT") + bytes((4, 0x02)) + keepalive_s.to_bytes(2, "big") + _string(client_id)
    return bytes((CONNECT,)) + remaining_length(len(body)) + body


def publish_head(topic: str, payload_length: int) -> bytes:
    """A QoS 1 PUBLISH up to (not including) its 2-byte packet identifier."""
    encoded = _string(topic)
    return bytes((PUBLISH_QOS1,)) + remaining_length(len(encoded) + 2 + payload_length) + encoded


def packet_ids(window: int) -> list[bytes]:
    """The packet identifier of each window slot (slot n → n + 1)."""
    return [(slot + 1).to_bytes(2, "big") for slot in range(window)]


def message_pool(gateway_id: str, root: str, seed: int) -> list[tuple[bytes, bytes]]:
    """(PUBLISH head, payload) for each message the gateway cycles through."""
    model = VehicleModel(random.Random(seed))
    pool = []
    for _ in range(POOL_STEPS):
        model.advance(1.0)
        for signal in TELEMETRY:
            topic = signal_topic(gateway_id, signal.group, signal.name, root)
            payload = format_payload(model.value(signal), topic=topic, unit=signal.unit)
            pool.append((publish_head(topic, len(payload)), payload))
    return pool


class Gateway(PacedDevice, asyncio.Protocol):
    """One gateway's MQTT connection."""

    def __init__(
        self,
        client_id: str,
        messages: Sequence[tuple[bytes, bytes]],
        ids: Sequence[bytes],
        stats: ProtocolStats,
        *,
        window: int,
        interval_s: float,
    ) -> None:
        PacedDevice.__init__(self, stats, window=window, interval_s=interval_s)
        self.client_id = client_id
        self.messages = messages
        self.ids = ids
        self.next_message = 0
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(connect_packet(self.client_id))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if len(data) == 4 and data[0] == PUBACK and not self.buffer:  # the usual case
            slot = ((data[2] << 8) | data[3]) - 1
            if 0 <= slot < self.window:
                self.acked(slot, 1)
                return
        self._split(self.buffer + data)

    def _split(self, data: bytes) -> None:
        """Whole packets out of ``data``; a partial one waits for more bytes."""
        start = 0
        while len(data) - start >= 2:
            kind = data[start] & 0xF0
            length, offset = 0, start + 1
            for shift in (0, 7, 14, 21):
                if offset >= len(data):
                    self.buffer = data[start:]
                    return
                byte = data[offset]
                offset += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
            end = offset + length
            if end > len(data):
                break
            body = data[offset:end]
            if kind == PUBACK and length == 2:
                slot = int.from_bytes(body, "big") - 1
                if 0 <= slot < self.window:
                    self.acked(slot, 1)
                else:
                    self.stats.unexpected_replies += 1
            elif kind == CONNACK and length == 2:
                if not self.connack.done():
                    self.connack.set_result(body[1])
            elif kind != PINGRESP:
                self.stats.unexpected_replies += 1
            start = end
        self.buffer = data[start:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_result(-1)
        self.lost()

    # -- PacedDevice ----------------------------------------------------------------------------
    def write_frame(self, slot: int) -> None:
        assert self.transport is not None
        index = self.next_message
        head, payload = self.messages[index]
        self.transport.write(head + self.ids[slot] + payload)
        index += 1
        self.next_message = index if index < len(self.messages) else 0

    def ping(self) -> None:
        if self.alive and self.transport is not None:
            self.transport.write(PINGREQ)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            if self.alive:
                self.transport.write(b"\xe0\x00")  # DISCONNECT: no will, a clean goodbye
            self.transport.close()


def broker_tls(url: str, ca: str | None) -> ssl.SSLContext | None:
    """The TLS context for an ``mqtts://`` broker (trusting ``ca``, else the system's)."""
    if not MqttIngestConfig.parse_url(url).tls:
        return None
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def connect_gateway(
    url: str, context: ssl.SSLContext | None, gateway: Gateway, timeout_s: float
) -> bool:
    """Connect to the broker and wait for CONNACK; False (counted) on any failure."""
    address = MqttIngestConfig.parse_url(url)
    loop = asyncio.get_running_loop()
    code = -1
    try:
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(lambda: gateway, address.host, address.port, ssl=context)
            code = await gateway.connack
        if code != 0:
            gateway.stats.note(f"the broker refused the connection (CONNACK return code {code})")
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        gateway.stats.note(exc)
    if code != 0:
        gateway.stats.connect_failures += 1
        gateway.close()
        return False
    gateway.alive = True
    gateway.stats.connected += 1
    return True
