"""CPU time and resident memory of a process and its descendants, from Linux ``/proc``.

``fleetgate serve --workers N`` is a supervisor and N workers, so the server's figures are
the sum over its process tree. Processes that end between two reads are skipped.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, index = [pid], 0
    while index < len(pids):
        current = pids[index]
        index += 1
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(child) for child in children)
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for member in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += rss_bytes(member)
    return total


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").exists()
