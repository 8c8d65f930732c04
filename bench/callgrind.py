"""Instruction counts per unit of work under ``valgrind --tool=callgrind``, stage by stage.

Shared by the hot-path benchmarks (``bench/hotpath.py``, ``bench/hotpath_tesla.py``): each
stage runs its work ``count`` times in a fresh process under callgrind, at two counts; the
difference divided by the extra units is what one unit costs, start-up excluded. The stage
named ``frames`` (making the test data) is subtracted from every other stage.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable


def instructions(script: str, stage: str, count: int) -> int:
    """Instructions callgrind collected for ``script STAGE --frames COUNT``."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         script, stage, "--frames", str(count)],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    assert match, done.stderr
    return int(match.group(1))


def main(
    script: str,
    description: str,
    stages: dict[str, Callable[[int], None]],
    *,
    default_frames: int,
    sizes: tuple[int, int],
    units_per_frame: int,
    unit: str,
) -> int:
    """The command line: run one stage (``--frames N``) or, with ``--measure``, print the
    instructions per ``unit`` of one stage or of all."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("stage", choices=[*stages, "all"])
    parser.add_argument("--frames", type=int, default=default_frames)
    parser.add_argument("--measure", action="store_true",
                        help=f"run under callgrind at two sizes; print instructions per {unit}")
    args = parser.parse_args()
    if not args.measure:
        stages[args.stage](args.frames)
        return 0
    small_count, large_count = sizes
    base = 0.0
    for stage in stages if args.stage == "all" else ["frames", args.stage]:
        small, large = instructions(script, stage, small_count), instructions(script, stage, large_count)
        per_unit = (large - small) / ((large_count - small_count) * units_per_frame)
        if stage == "frames":
            base = per_unit
            print(f"(making the test frames: {per_unit:,.0f} instructions per {unit})")
            continue
        print(f"{stage:<8} {per_unit - base:>10,.0f} instructions per {unit}", flush=True)
    return 0
