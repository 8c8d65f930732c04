"""Free loopback ports for test servers, without races between tests.

``bind(0)`` and close hands back a port from the kernel's ephemeral range; before the test's
server binds it, another xdist worker can be handed the same port, or any outgoing
connection (to PostgreSQL, Redis, a broker) can take it as its local port. Both happened
("address already in use" in a loaded full run). So ports come from below the ephemeral
range, where the kernel never picks local ports, from a block of this xdist worker's own,
each port handed out once per process, and checked to be bindable (TCP and UDP: Teltonika
listens on both) in case another suite runs on the machine at the same time.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"
_FIRST, _BLOCK, _BLOCKS = 10_000, 2_500, 8  # 10000-29999, below 32768 (ip_local_port_range)


def _worker_index() -> int:
    """0 for ``gw0`` (and a run without xdist), 1 for ``gw1``, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw") or 0) % _BLOCKS


def _candidates() -> Iterator[int]:
    first = _FIRST + _worker_index() * _BLOCK
    start = random.Random(os.getpid()).randrange(_BLOCK)  # another suite starts elsewhere
    for step in itertools.count():
        yield first + (start + step) % _BLOCK


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


_PORTS = _candidates()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, not handed out before in this process."""
    for _ in range(_BLOCK):
        port = next(_PORTS)
        if _bindable(port):
            return port
    raise RuntimeError("no free port left in this worker's block")
