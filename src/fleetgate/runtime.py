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


@dataclass(frozen=True, slots=True)
class ServerContext:
    """What a listener factory receives: the config, the pipeline it feeds, the store."""

    config: Config
    pipeline: Pipeline
    store: RecordStore | None


# Each returns None when its part of the config disables the listener.
ListenerFactory = Callable[[ServerContext], Listener | None]
