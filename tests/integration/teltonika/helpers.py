"""Shared by the Teltonika listener tests: a gated sink and a server on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.records import Record
from fleetgate.sinks.base import Sink
from fleetgate.sinks.registry import register_sink


class GatedSink(Sink):
    """Tests set ``gate`` to a fresh event, name the sink in ``records`` and open it."""

    name = "test-teltonika-gated"
    gate: asyncio.Event | None = None

    async def publish(self, batch: Sequence[Record]) -> None:
        assert GatedSink.gate is not None
        await GatedSink.gate.wait()


register_sink(GatedSink)
GATED = GatedSink.name


async def start(tmp_path: Path, top: dict[str, Any] | None = None, **teltonika: Any) -> Server:
    """A started server with only the Teltonika listener, on 127.0.0.1 and a free port;
    ``teltonika`` goes into its section, ``top`` into the top level."""
    server = Server(
        build_config(
            {
                "data_dir": str(tmp_path),
                "api": {"enabled": False},
                "tesla_enabled": False,
                "teltonika": {"host": "127.0.0.1", "port": 0, **teltonika},
                **(top or {}),
            },
            environ={},
        )
    )
    await server.start()
    return server
