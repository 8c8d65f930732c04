"""Which command center a process gets: local, routed through Redis, or none.

Apart from :mod:`.commands` because the Redis routing (:mod:`.command_routing`) builds on
that module and is imported here only when a config asks for it.
"""

from __future__ import annotations

import socket

from fleetgate.config import Config
from fleetgate.listeners.teltonika.commands import CommandCenter


def command_center(config: Config, node_id: str = "") -> CommandCenter | None:
    """The command center of one process: routed through Redis in every process that takes
    trackers when ``teltonika.command_routing`` is set; else local, in the process serving
    the API; else none."""
    teltonika = config.teltonika
    if not teltonika.enabled:
        return None
    if teltonika.command_routing is not None:
        # The Redis routing (its module and client) only when configured.
        from fleetgate.listeners.teltonika.command_routing import RoutedCommandCenter

        return RoutedCommandCenter(
            teltonika,
            teltonika.command_routing,
            node_id or config.node_id or socket.gethostname(),
        )
    if not config.api.enabled:
        return None
    return CommandCenter(teltonika, config.data_path, alone=not config.shares_ports)
