"""A minimal ack-only server: the ceiling fleetgate is measured against, on the same load.

It listens like fleetgate and does only what the device must see, nothing else:

* **Teltonika TCP**: reads the IMEI (2-byte length + digits), answers ``01``, then for each
  AVL frame finds its end from the length field (preamble 4 + length 4 + data + CRC 4) and
  writes the 4-byte record count read from the frame header (N1, the byte after the codec
  id). No CRC check, no decode, no store.
* **Tesla**: an mTLS WebSocket server (client certificates must chain to the PKI's CA)
  answering every binary frame with the ack fleetgate and Tesla's server send:
  :func:`~fleetgate.protocols.tesla.envelope.build_ack` of the frame's txid and topic, so
  a generator can match each ack to its frame. txid and topic are read with a few
  ``unpack_from`` calls on the flatbuffer (about 1 µs; the protocol core's full
  ``parse_envelope`` takes 5 µs), falling back to ``parse_envelope`` for any frame whose
  layout the short reader does not take. ``--tesla-impl websockets`` (default) or
  ``picows`` (a Cython WebSocket layer).

``--durable DIR`` makes the Teltonika ack durable the cheapest way a server can: each
frame's bytes go into a file pre-allocated with zeros in ``DIR`` (so a sync writes data
blocks, not file-system metadata), one thread writes and ``fdatasync``s whatever arrived
while the previous sync ran (group commit) and the acks of a group are sent once its sync
returned. No CRC, no decode, no index: the floor for a durable ack's latency on this disk.

One process, one uvloop event loop. Prints ``ceiling server pid <pid> ready`` once it
listens; stops on SIGTERM or SIGINT.

Run: ``.venv/bin/python bench/ceiling_server.py --pki DIR [--host 127.0.0.1]
[--teltonika-port 5027] [--tesla-port 4443] [--tesla-impl websockets|picows] [--durable DIR]``
(``--pki`` is a ``fleetgate certs init`` directory; without it Tesla is not served;
``--teltonika-port 0`` / ``--tesla-port 0`` turn a protocol off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import struct
import sys
import threading
from pathlib import Path

from fleetgate.pki import CA_CERT, SERVER_CERT, SERVER_KEY
from fleetgate.protocols.tesla.envelope import EnvelopeError, build_ack, parse_envelope

ACKS = [count.to_bytes(4, "big") for count in range(256)]
_U32 = struct.Struct("<I").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U16x2 = struct.Struct("<HH").unpack_from


class GroupCommit:
    """Frames written and synced by one thread, group after group; acks sent after the sync."""

    SIZE = 256 << 20  # pre-allocated; wraps around (the bytes are never read back)

    def __init__(self, directory: Path, loop: asyncio.AbstractEventLoop) -> None:
        path = directory / "ceiling-durable.bin"
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        zeros = bytes(1 << 20)
        for offset in range(0, self.SIZE, len(zeros)):
            os.pwrite(self.fd, zeros, offset)
        os.fsync(self.fd)
        self.offset = 0
        self.loop = loop
        self.pending: list[tuple[asyncio.Transport, bytes, bytes]] = []
        self.wake = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self.thread.start()

    def add(self, transport: asyncio.Transport, data: bytes, ack: bytes) -> None:
        with self.wake:
            self.pending.append((transport, data, ack))
            self.wake.notify()

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.pending and self.running:
                    self.wake.wait()
                if not self.running:
                    return
                group, self.pending = self.pending, []
            data = b"".join(item[1] for item in group)
            if self.offset + len(data) > self.SIZE:
                self.offset = 0
            os.pwrite(self.fd, data, self.offset)
            self.offset += len(data)
            os.fdatasync(self.fd)
            self.loop.call_soon_threadsafe(self._send, group)

    @staticmethod
    def _send(group: list[tuple[asyncio.Transport, bytes, bytes]]) -> None:
        for transport, _, ack in group:
            if not transport.is_closing():
                transport.write(ack)

    def close(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        self.thread.join()
        os.close(self.fd)


class Tracker(asyncio.Protocol):
    """One Teltonika connection: IMEI, then an ack per frame (after a sync with --durable)."""

    commit: GroupCommit | None = None  # set by main() for --durable

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.identified = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        commit = self.commit
        # The usual case: exactly one whole frame in one read.
        if (
            self.identified
            and not self.buffer
            and len(data) >= 10
            and int.from_bytes(data[4:8], "big") + 12 == len(data)
        ):
            if commit is None:
                transport.write(ACKS[data[9]])
            else:
                commit.add(transport, data, ACKS[data[9]])
            return
        buffer = self.buffer
        buffer += data
        if not self.identified:
            if len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
                return
            del buffer[: 2 + int.from_bytes(buffer[:2], "big")]
            self.identified = True
            transport.write(b"\x01")
        position, acks = 0, []
        while len(buffer) - position >= 10:
            end = position + 12 + int.from_bytes(buffer[position + 4 : position + 8], "big")
            if end > len(buffer):
                break
            acks.append(ACKS[buffer[position + 9]])
            position = end
        if acks:
            if commit is None:
                transport.write(b"".join(acks))
            else:
                commit.add(transport, bytes(buffer[:position]), b"".join(acks))
        if position:
            del buffer[:position]


def tesla_ack(frame: bytes) -> bytes | None:
    """The ack for ``frame`` (its txid and topic), or None for an unreadable frame."""
    try:
        size = len(frame)
        table = _U32(frame, 0)[0]
        vtable = table - _I32(frame, table)[0]
        if 0 <= vtable < size and _U16x2(frame, vtable)[0] >= 8:  # has slots 0 and 1
            vectors = []
            for field in _U16x2(frame, vtable + 4):
                if not field:
                    raise EnvelopeError("fall back")
                at = table + field
                vector = at + _U32(frame, at)[0]
                end = vector + 4 + _U32(frame, vector)[0]
                if end > size:
                    raise EnvelopeError("fall back")
                vectors.append(frame[vector + 4 : end])
            return build_ack(vectors[0], vectors[1])
    except (struct.error, EnvelopeError):
        pass
    try:
        envelope = parse_envelope(frame)
    except EnvelopeError:
        return None
    return build_ack(envelope.txid, envelope.topic)


def server_tls(pki: Path) -> ssl.SSLContext:
    """TLS 1.2+, the PKI's server certificate, client certificates required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki / SERVER_CERT, pki / SERVER_KEY)
    context.load_verify_locations(cafile=pki / CA_CERT)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve_websockets(host: str, port: int, context: ssl.SSLContext) -> object:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # a vehicle that just goes away
            async for message in ws:
                if isinstance(message, bytes):
                    ack = tesla_ack(message)
                    if ack is not None:
                        await ws.send(ack)

    return await serve(
        handler, host, port, ssl=context, compression=None, ping_interval=None, max_size=2**21
    )


async def serve_picows(host: str, port: int, context: ssl.SSLContext) -> object:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    class Vehicle(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.BINARY:
                ack = tesla_ack(frame.get_payload_as_bytes())
                if ack is not None:
                    transport.send(WSMsgType.BINARY, ack)
            elif frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    return await ws_create_server(
        lambda request: Vehicle(), host, port, ssl=context, max_frame_size=2**21
    )


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    servers: list[object] = []
    if args.durable:
        Tracker.commit = GroupCommit(Path(args.durable), loop)
    if args.teltonika_port:
        servers.append(await loop.create_server(Tracker, args.host, args.teltonika_port))
    if args.tesla_port and args.pki:
        serve = serve_picows if args.tesla_impl == "picows" else serve_websockets
        servers.append(await serve(args.host, args.tesla_port, server_tls(Path(args.pki))))
    print(f"ceiling server pid {os.getpid()} ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()  # type: ignore[attr-defined]
    if Tracker.commit is not None:
        Tracker.commit.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--teltonika-port", type=int, default=5027)
    parser.add_argument("--tesla-port", type=int, default=4443)
    parser.add_argument("--pki", help="a `fleetgate certs init` directory (server cert, CA)")
    parser.add_argument("--tesla-impl", choices=("websockets", "picows"), default="websockets")
    parser.add_argument("--durable", metavar="DIR",
                        help="ack Teltonika frames only once synced to a file in DIR")
    import uvloop

    uvloop.run(main(parser.parse_args()))
    sys.exit(0)
