"""Process measurements shared by the benchmarks (Linux /proc), and a free loopback port.

The /proc readers are the load generator's (:mod:`fleetgate.sim.load.procstats`); this
module adds the benchmarks' units and a free port.
"""

from __future__ import annotations

import socket

from fleetgate.sim.load.procstats import cpu_seconds, rss_bytes, tree_cpu_seconds, tree_pids

__all__ = ["cpu_seconds", "free_port", "rss_mb", "tree_cpu_seconds", "tree_pids"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    return rss_bytes(pid) / (1024 * 1024)
