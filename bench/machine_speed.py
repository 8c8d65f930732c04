"""How fast this machine runs Python right now: one fixed workload, timed in CPU seconds.

The same code gave 54k acked Teltonika records/s one afternoon and 128k later the same day
on this machine: the host's speed moves by 2x within a day. Every figure is a
same-run ratio for that reason, and the benchmarks print this index beside absolute
figures, so that a figure from another hour can be read against the speed it was taken at.

The workload is fixed and uses only the standard library (integer arithmetic, dicts,
strings, bytes and struct, roughly what a decoder does); the index is loops per CPU-second
of the best of several runs (the least disturbed), so it measures the core's speed, not
how busy the machine is. The code under test is not in it: the index of one hour compares
with another's whatever the checkout.
"""

from __future__ import annotations

import struct
import time

_RECORD = struct.Struct("<QBiiHHBH")
_PACKED = bytes(range(26))
_LOOPS = 20_000
_RUNS = 5


def _workload(loops: int) -> int:
    """A decoder-like mix of the interpreter's common operations; returns a checksum."""
    total = 0
    names: dict[str, int] = {}
    unpack = _RECORD.unpack_from
    for i in range(loops):
        stamp, priority, lon, lat, alt, angle, sats, speed = unpack(_PACKED, 0)
        key = f"io{i % 64}"
        names[key] = names.get(key, 0) + (stamp ^ lon) % 1000 + priority + sats
        values = [lat + n for n in range(8)]
        total += sum(values) + alt * angle + speed + len(key)
        if i % 16 == 0:
            total ^= hash(tuple(values[:4])) & 0xFFFF
    return total + len(names)


def speed_index(runs: int = _RUNS, loops: int = _LOOPS) -> float:
    """Thousands of workload loops per CPU-second, best of ``runs``."""
    best = float("inf")
    for _ in range(runs):
        started = time.thread_time()
        _workload(loops)
        best = min(best, time.thread_time() - started)
    return loops / best / 1000


def describe() -> str:
    """One line for a benchmark's output."""
    return f"machine speed index {speed_index():.0f} (bench/machine_speed.py: higher is faster)"


if __name__ == "__main__":
    print(describe())
