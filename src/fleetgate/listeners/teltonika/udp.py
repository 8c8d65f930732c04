"""Teltonika over UDP: one datagram in, records to the pipeline, a 7-byte ack out.

Each datagram carries the IMEI and its records (spec section 4), so there is no session:
the datagram is decoded by the sans-I/O core, checked by the device authority (strict
mode: a datagram of an unknown IMEI gets no ack and is counted ``rejected``), and handed
to :meth:`Pipeline.accept`; only when that says the records are safe does the device get
its ack (packet id and AVL packet id echoed, record count). A datagram that fails the
length check or the record structure is dropped without an ack and counted
(``protocol_error``); one that carries a value that cannot be true (a device time past
the year 9999) likewise (``impossible_value``). The device resends them.

Resends: a tracker whose ack was lost sends the same datagram again.
:class:`UdpDuplicateFilter` recognises it (same IMEI, AVL packet id and records within
``DUPLICATE_WINDOW_S``): once the first copy is safe and acked, a resend is acked again
without being stored again (``duplicate``); while the first copy is still on its way to
safety, a resend is dropped (``duplicate_in_flight``): the first copy's ack answers it. A
first copy that was not accepted (no ack) is forgotten, so its resend is stored.

Acks wait for the pipeline without holding up the datagrams behind them (see
:class:`TeltonikaUdpProtocol`). At most ``MAX_IN_FLIGHT`` are in flight; past that,
datagrams are dropped (and counted) rather than queued without bound: a device that gets
no ack resends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from fleetgate.config import TeltonikaConfig
from fleetgate.listeners.teltonika.acked import AckedCounter
from fleetgate.listeners.teltonika.authority import DeviceGate
from fleetgate.listeners.teltonika.io_naming import IoTables
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog
from fleetgate.pipeline import AckQueue, Pipeline
from fleetgate.protocols.teltonika.errors import ImpossibleValueError, TeltonikaDecodeError
from fleetgate.protocols.teltonika.model import codec_name
from fleetgate.protocols.teltonika.records import to_records
from fleetgate.protocols.teltonika.udp import (
    UdpDatagram,
    UdpDuplicateFilter,
    Verdict,
    decode_udp_datagram,
    encode_udp_ack,
)
from fleetgate.records import Record, now_ms
from fleetgate.runtime import ServerContext

log = logging.getLogger("fleetgate.teltonika")
_count_acked = AckedCounter("teltonika-udp")

MAX_IN_FLIGHT = 4096
# A resend within this long of its first copy's last sighting is recognised as one.
DUPLICATE_WINDOW_S = 300.0

# Anyone can send datagrams: one line per junk datagram would let them fill the log.
_REFUSED_LOG = LimitedLog(log, "teltonika.udp.refused")
_NOT_ALLOWED_LOG = LimitedLog(log, "teltonika.udp.not_allowed")
_IMPOSSIBLE_LOG = LimitedLog(log, "teltonika.udp.impossible_value")


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the ack of one datagram needs once the pipeline has decided."""

    addr: tuple[str, int]
    datagram: UdpDatagram
    count: int
    codec: str


class TeltonikaUdpProtocol(asyncio.DatagramProtocol):
    """Receives tracker datagrams; acks each one after the pipeline accepted it.

    ``datagram_received`` decodes and checks each datagram and queues its records for one
    intake task, which appends them through an :class:`AckQueue`; the queue answers each
    datagram (ack or silence) once the ack policy has decided. At most ``MAX_IN_FLIGHT``
    datagrams wait; past that, datagrams are dropped and counted (the device resends).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        gate: DeviceGate,
        io_tables: IoTables,
        duplicates: UdpDuplicateFilter | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.gate = gate
        self.io_tables = io_tables
        self.duplicates = duplicates or UdpDuplicateFilter(DUPLICATE_WINDOW_S)
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
        except ImpossibleValueError as exc:
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "impossible_value").inc()
            _IMPOSSIBLE_LOG.warning(
                "udp datagram refused: a value that cannot be true; no ack (the device "
                "keeps it)",
                extra=fields(
                    peer=f"{addr[0]}:{addr[1]}", reason=exc.reason, evidence=data[:64].hex()
                ),
            )
            return
        except TeltonikaDecodeError as exc:
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "protocol_error").inc()
            _REFUSED_LOG.warning(
                "udp datagram refused; no ack",
                extra=fields(
                    peer=f"{addr[0]}:{addr[1]}", reason=exc.reason, evidence=data[:64].hex()
                ),
            )
            return
        if not self.gate.admit(datagram.imei).allowed:
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "rejected").inc()
            _NOT_ALLOWED_LOG.warning(
                "udp datagram from a device not allowed; no ack",
                extra=fields(peer=f"{addr[0]}:{addr[1]}", imei=datagram.imei),
            )
            return
        codec = f"udp:{codec_name(datagram.codec)}"
        verdict = self.duplicates.check(datagram, time.monotonic())
        if verdict is Verdict.DUPLICATE:
            # Stored and acked before: the device lost the ack. Ack again, store nothing.
            self._send_ack(datagram, datagram.frame.count, addr)
            metrics.labelled(metrics.TELTONIKA_FRAMES, codec, "duplicate").inc()
            return
        if verdict is Verdict.IN_FLIGHT:
            # The first copy's ack is on its way (or it is refused, and the next resend
            # is stored): nothing to do for this one.
            metrics.labelled(metrics.TELTONIKA_FRAMES, codec, "duplicate_in_flight").inc()
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            self.duplicates.release(datagram)
            metrics.labelled(metrics.TELTONIKA_FRAMES, "udp", "overloaded").inc()
            return
        records = to_records(
            datagram.imei, datagram.frame, now_ms(), self.io_tables.for_imei(datagram.imei)
        )
        self._intake.append((records, _Reply(addr, datagram, len(records), codec)))
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
            self.duplicates.release(reply.datagram)  # its resend must be stored
            metrics.labelled(metrics.TELTONIKA_FRAMES, reply.codec, "not_acked").inc()
            metrics.labelled(metrics.ACKS, "teltonika-udp", "withheld").inc()
            return
        self.duplicates.confirm(reply.datagram, time.monotonic())
        self._send_ack(reply.datagram, reply.count, reply.addr)
        _count_acked(reply.codec)

    def _send_ack(self, datagram: UdpDatagram, count: int, addr: tuple[str, int]) -> None:
        """The one place acks are written."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(
                encode_udp_ack(datagram.packet_id, datagram.avl_packet_id, count), addr
            )

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
        self.gate = DeviceGate.from_settings(settings)
        self.protocol = TeltonikaUdpProtocol(pipeline, self.gate, IoTables(settings))
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        await self.gate.start()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self.protocol,
                local_addr=(self.settings.host, self.settings.udp_listen_port),
                reuse_port=self.reuse_port,
            )
        except BaseException:
            await self.gate.stop()
            raise
        self._transport = transport
        log.info("teltonika udp listening", extra=fields(address=self.address))

    async def stop(self) -> None:
        if self._transport is None:
            return
        await self.protocol.drain(self.settings.shutdown_timeout_s)
        self._transport.close()
        self._transport = None
        await self.gate.stop()

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
            "authority": self.gate.health(),
        }


def create_listener(context: ServerContext) -> TeltonikaUdpListener | None:
    """Listener factory (see :data:`fleetgate.app.LISTENER_FACTORIES`)."""
    settings = context.config.teltonika
    if not (settings.enabled and settings.udp_enabled):
        return None
    return TeltonikaUdpListener(settings, context.pipeline, context.config.shares_ports)
