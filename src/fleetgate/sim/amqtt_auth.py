"""An amqtt auth plugin for the embedded demo broker: every loopback client may connect.

amqtt's own ``AnonymousAuthPlugin`` marks clients without credentials *anonymous*, and
amqtt drops an anonymous client's session when it disconnects, so QoS 1 messages
published while fleetgate's subscriber is away would be lost. This plugin accepts every
client without marking it, so persistent sessions work. The broker binds to loopback only.
Loaded by amqtt through its dotted path (this module imports amqtt; nothing else does).
"""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session


class LoopbackAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    @dataclass
    class Config:
        """No options."""

    async def authenticate(self, *, session: Session) -> bool:
        return True
