"""Teltonika over UDP: one datagram in, records to the pipeline, a 7-byte ack out.

Each datagram carries the IMEI and its records (spec section 4), so there is no session:
the datagram is decoded by the sans-I/O core, checked against the device allow-list, and
handed to :meth:`Pipeline.accept`; only when that says the records are safe does the
device get its ack (packet id and AVL packet id echoed, record count). A datagram that
fails the length check or the record structure is dropped without an ack and counted; the
device resends it.

Acks wait for the pipeline, so each datagram is handled in its own task. At most
``MAX_IN_FLIGHT`` are in flight; past that, datagrams are dropped (and counted) rather than
queued without bound: a device that gets no ack resends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fleetgate.config import TeltonikaConfig
from fleetgate.listeners.teltonika.authority import DeviceAuthority
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.pipeline import Pipeline
from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.model import codec_name
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.protocols.teltonika.udp import UdpDatagram, decode_udp_datagram, encode_udp_ack
from fleetgate.records import now_ms
from fleetgate.runtime import ServerContext

log = logging.getLogger("fleetgate.teltonika")

MAX_IN_FLIGHT = 4096


class TeltonikaUdpProtocol(asyncio.DatagramProtocol):
    """Receives tracker datagrams; acks each one after the pipeline accepted it."""

    def __init__(self, pipeline: Pipeline, authority: DeviceAuthority) -> None:
        self.pipeline = pipeline
        self.authority = authority
        self.transport: asyncio.DatagramTransport | None = None
        self.in_flight: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            datagram = decode_udp_datagram(data)
        except TeltonikaDecodeError as exc:
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "protocol_error").inc()
            log.warning(
                "udp datagram refused; no ack",
                extra=fields(
                    peer=f"{addr[0]}:{addr[1]}", reason=exc.reason, evidence=data[:64].hex()
                ),
            )
            return
        if not self.authority.allows(datagram.imei):
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "rejected").inc()
            log.warning(
                "udp datagram from a device not allowed; no ack",
                extra=fields(peer=f"{addr[0]}:{addr[1]}", imei=datagram.imei),
            )
            return
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "overloaded").inc()
            return
        task = asyncio.get_running_loop().create_task(self._accept(datagram, addr))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _accept(self, datagram: UdpDatagram, addr: tuple[str, int]) -> None:
        codec = f"udp:{codec_name(datagram.codec)}"
        frame = AvlFrame(datagram.codec, datagram.records, datagram.raw)
        records = to_records(datagram.imei, frame, now_ms())
        if not await self.pipeline.accept(records):
            metrics.labelled(metrics.TELTONIKA_FRAMES, codec, "not_acked").inc()
            metrics.labelled(metrics.ACKS, "teltonika-udp", "withheld").inc()
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(
                encode_udp_ack(datagram.packet_id, datagram.avl_packet_id, len(records)), addr
            )
        metrics.labelled(metrics.TELTONIKA_FRAMES, codec, "accepted").inc()
        metrics.labelled(metrics.ACKS, "teltonika-udp", "acked").inc()


class TeltonikaUdpListener:
    """Accepts Teltonika trackers on UDP (same port number as TCP by default)."""

    name = "teltonika-udp"

    def __init__(
        self, settings: TeltonikaConfig, pipeline: Pipeline, reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.protocol = TeltonikaUdpProtocol(pipeline, DeviceAuthority(settings.allowed_imeis))
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self.protocol,
            local_addr=(self.settings.host, self.settings.udp_listen_port),
            reuse_port=self.reuse_port,
        )
        self._transport = transport
        log.info("teltonika udp listening", extra=fields(address=self.address))

    async def stop(self) -> None:
        if self._transport is None:
            return
        pending = list(self.protocol.in_flight)
        if pending:
            await asyncio.wait(pending, timeout=5)
        self._transport.close()
        self._transport = None

    @property
    def port(self) -> int:
        if self._transport is None:
            return 0
        return int(self._transport.get_extra_info("sockname")[1])

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self._transport is not None else "down",
            "address": self.address,
            "in_flight": len(self.protocol.in_flight),
        }


def create_listener(context: ServerContext) -> TeltonikaUdpListener | None:
    """Listener factory (see :data:`fleetgate.app.LISTENER_FACTORIES`)."""
    settings = context.config.teltonika
    if not (settings.enabled and settings.udp_enabled):
        return None
    return TeltonikaUdpListener(settings, context.pipeline, context.config.shares_ports)
