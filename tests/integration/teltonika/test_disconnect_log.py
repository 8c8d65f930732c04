"""A tracker's disconnect is logged like its connect: peer, IMEI, and why."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from fleetgate.app import Server
from fleetgate.config import build_config

pytestmark = pytest.mark.integration

IMEI = "356307042441013"
HANDSHAKE = bytes.fromhex("000f333536333037303432343431303133")


async def test_disconnect_is_logged_with_peer_and_imei(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(
        build_config(
            {
                "data_dir": str(tmp_path),
                "api": {"enabled": False},
                "store": {"enabled": False},
                "teltonika": {"host": "127.0.0.1", "port": 0, "udp_enabled": False},
            },
            environ={},
        )
    )
    await server.start()
    listener = server.listener("teltonika")
    assert listener is not None
    port = int(listener.health()["address"].rsplit(":", 1)[1])
    try:
        with caplog.at_level(logging.INFO, logger="fleetgate.teltonika"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HANDSHAKE)
            assert await reader.readexactly(1) == b"\x01"
            host, port_ = writer.get_extra_info("sockname")[:2]
            local = f"{host}:{port_}"
            writer.close()
            await writer.wait_closed()
            async with asyncio.timeout(5):
                # Polls: a log line has no event to wait on.
                while not any(r.getMessage() == "tracker disconnected" for r in caplog.records):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
    finally:
        await server.stop()
    by_message = {r.getMessage(): getattr(r, "fields", {}) for r in caplog.records}
    connected, disconnected = by_message["tracker connected"], by_message["tracker disconnected"]
    assert connected == {"peer": local, "imei": IMEI, "device": "known"}
    assert disconnected["peer"] == local and disconnected["imei"] == IMEI
    assert disconnected["reason"]
