"""Teltonika over UDP: one datagram in, records to the pipeline, a 7-byte ack out.

Each datagram carries the IMEI and its records (spec section 4), so there is no session:
the datagram is decoded by the sans-I/O core, checked against the device allow-list, and
handed to :meth:`Pipeline.accept`; only when that says the records are safe does the
device get its ack (packet id and AVL packet id echoed, record count). A datagram that
fails the length check or the record structure is dropped without an ack and counted; the
device resends it.

Acks wait for the pipeline without holding up the datagrams behind them (see
:class:`TeltonikaUdpProtocol`). At most ``MAX_IN_FLIGHT`` are in flight; past that,
datagrams are dropped (and counted) rather than queued without bound: a device that gets
no ack resends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from fleetgate.config import TeltonikaConfig
from fleetgate.listeners.teltonika.authority import DeviceAuthority
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.pipeline import AckQueue, Pipeline
from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.model import codec_name
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.protocols.teltonika.udp import decode_udp_datagram, encode_udp_ack
from fleetgate.records import Record, now_ms
from fleetgate.runtime import ServerContext

log = logging.getLogger("fleetgate.teltonika")

MAX_IN_FLIGHT = 4096

# Anyone can send datagrams: one line per junk datagram would let them fill the log.
_REFUSED_LOG = LimitedLog(log, "teltonika.udp.refused")
_NOT_ALLOWED_LOG = LimitedLog(log, "teltonika.udp.not_allowed")


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the ack of one datagram needs once the pipeline has decided."""

    addr: tuple[str, int]
    packet_id: int
    avl_packet_id: int
    count: int
    codec: str


class TeltonikaUdpProtocol(asyncio.DatagramProtocol):
    """Receives tracker datagrams; acks each one after the pipeline accepted it.

    ``datagram_received`` decodes and checks each datagram and queues its records for one
    intake task, which appends them through an :class:`AckQueue`; the queue answers each
    datagram (ack or silence) once the ack policy has decided. At most ``MAX_IN_FLIGHT``
    datagrams wait; past that, datagrams are dropped and counted (the device resends).
    """

    def __init__(self, pipeline: Pipeline, authority: DeviceAuthority) -> None:
        self.pipeline = pipeline
        self.authority = authority
        self.transport: asyncio.DatagramTransport | None = None
        self._intake: deque[tuple[list[Record], _Reply]] = deque()
        self._wakeup = asyncio.Event()
        self.acks: AckQueue[_Reply] = AckQueue(
            pipeline, self._answer, MAX_IN_FLIGHT, name="teltonika-udp-acks"
        )
        self._task: asyncio.Task[None] | None = None
        self._draining = False

    @property
    def in_flight(self) -> int:
        """Datagrams received and not yet answered."""
        return len(self._intake) + self.acks.waiting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._task = asyncio.get_running_loop().create_task(self._take(), name="teltonika-udp")

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            datagram = decode_udp_datagram(data)
        except TeltonikaDecodeError as exc:
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "protocol_error").inc()
            _REFUSED_LOG.warning(
                "udp datagram refused; no ack",
                extra=fields(
                    peer=f"{addr[0]}:{addr[1]}", reason=exc.reason, evidence=data[:64].hex()
                ),
            )
            return
        if not self.authority.allows(datagram.imei):
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "rejected").inc()
            _NOT_ALLOWED_LOG.warning(
                "udp datagram from a device not allowed; no ack",
                extra=fields(peer=f"{addr[0]}:{addr[1]}", imei=datagram.imei),
            )
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "overloaded").inc()
            return
        frame = AvlFrame(datagram.codec, datagram.records, datagram.raw)
        records = to_records(datagram.imei, frame, now_ms())
        reply = _Reply(
            addr,
            datagram.packet_id,
            datagram.avl_packet_id,
            len(records),
            f"udp:{codec_name(datagram.codec)}",
        )
        self._intake.append((records, reply))
        self._wakeup.set()

    async def _take(self) -> None:
        intake = self._intake
        while True:
            if not intake:
                if self._draining:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            records, reply = intake.popleft()
            if records:
                await self.acks.put(records, reply)
            else:
                self._answer(reply, True)

    def _answer(self, reply: _Reply, safe: bool) -> None:
        if not safe:
            metrics.labelled(metrics.TELTONIKA_FRAMES, reply.codec, "not_acked").inc()
            metrics.labelled(metrics.ACKS, "teltonika-udp", "withheld").inc()
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(
                encode_udp_ack(reply.packet_id, reply.avl_packet_id, reply.count), reply.addr
            )
        metrics.labelled(metrics.TELTONIKA_FRAMES, reply.codec, "accepted").inc()
        metrics.labelled(metrics.ACKS, "teltonika-udp", "acked").inc()

    async def drain(self, timeout_s: float) -> None:
        """Answer what was received (bounded by ``timeout_s``), then stop taking more."""
        self._draining = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            self._task.cancel()
        await self.acks.drain(timeout_s)
        self.acks.close()


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
        await self.protocol.drain(self.settings.shutdown_timeout_s)
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
            "in_flight": self.protocol.in_flight,
        }


def create_listener(context: ServerContext) -> TeltonikaUdpListener | None:
    """Listener factory (see :data:`fleetgate.app.LISTENER_FACTORIES`)."""
    settings = context.config.teltonika
    if not (settings.enabled and settings.udp_enabled):
        return None
    return TeltonikaUdpListener(settings, context.pipeline, context.config.shares_ports)
