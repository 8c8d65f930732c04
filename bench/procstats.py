"""Process measurements shared by the benchmarks (Linux /proc), and a free loopback port.

The /proc readers are the load generator's (:mod:`fleetgate.sim.load.procstats`); this
module adds the benchmarks' units and a free port.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fleetgate.sim.load.procstats import cpu_seconds, rss_bytes, tree_cpu_seconds, tree_pids

__all__ = [
    "cpu_seconds",
    "disk_counters",
    "free_port",
    "rss_mb",
    "tree_cpu_seconds",
    "tree_pids",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    return rss_bytes(pid) / (1024 * 1024)



def disk_counters(path: str) -> tuple[int, int]:
    """Bytes written to the block device holding ``path`` and the milliseconds it was busy
    (``/sys/dev/block/M:N/stat``), for the whole machine: other processes count too.
    Per-process ``write_bytes`` (/proc/PID/io) is no measure of disk writes here: on this
    machine every ``fdatasync`` added about 1 MiB to it."""
    device = os.stat(path).st_dev
    fields = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat").read_text()
    values = [int(value) for value in fields.split()]
    return values[6] * 512, values[9]  # sectors written, io_ticks
