"""What a running server shares with the pieces it runs: listeners, the API and the app.

This module sits below :mod:`fleetgate.app`, :mod:`fleetgate.listeners` and
:mod:`fleetgate.api`, so each of them depends downward on these few names instead of on the
whole server: a listener factory gets a :class:`ServerContext` and returns a
:class:`Listener`; the app starts and stops listeners through that protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fleetgate.config import Config
from fleetgate.pipeline import Pipeline
from fleetgate.store import RecordStore


class StartupError(Exception):
    """The server could not start (a port in use, a listener that failed): one line."""


class Listener(Protocol):
    """A device-facing server (Teltonika TCP, Tesla WebSocket, MQTT subscriber...)."""

    name: str

    async def start(self) -> None:
        """Bind and begin accepting devices."""

    async def stop(self) -> None:
        """Stop accepting, close sessions."""

    def health(self) -> dict[str, Any]:
        """State for ``/health`` (bound address, open connections...)."""


class CommandRefusedError(Exception):
    """A device command the server cannot take or route: an HTTP ``status``, a short
    ``code`` for programs and a one-line ``message`` for people."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class DeviceCommands(Protocol):
    """Commands to devices as the API sees them: submit one, read their states.

    Views are the commands' JSON objects (``id``, ``device_id``, ``command``, ``codec``,
    ``status``, ``response``, ...), so an implementation that routes through another
    process (Redis, NATS) hands the API the same thing. Refusals raise
    :class:`CommandRefusedError`.
    """

    async def submit(
        self, device_id: str, command: str, *, codec: int = 12, wait_s: float | None = None
    ) -> dict[str, Any]:
        """Queue ``command``, send it on the device's connection when there is one, and
        wait up to ``wait_s`` (None: the configured time) for the answer. The view."""

    async def history(self, device_id: str, limit: int) -> list[dict[str, Any]]:
        """The device's commands, newest first."""

    async def get(self, device_id: str, command_id: int) -> dict[str, Any] | None:
        """One command of the device, or None."""


@dataclass(frozen=True, slots=True)
class ServerContext:
    """What a listener factory receives: the config, the pipeline it feeds, the store, and
    the device command queue the API hands commands to (None: no API in this process)."""

    config: Config
    pipeline: Pipeline
    store: RecordStore | None
    commands: DeviceCommands | None = None


# Each returns None when its part of the config disables the listener.
ListenerFactory = Callable[[ServerContext], Listener | None]
