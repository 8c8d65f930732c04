"""The durable spool alone: records/s made durable with group commit, and ack latency.

``--devices`` concurrent senders each hand the pipeline one frame of 10 Teltonika records
(codec 8E, decoded beforehand, as bench/hotpath.py builds them) and wait for its ``spool``
ack before the next, exactly as a tracker connection does; no sink and no store, so the
figure is what the spool's write + ``fdatasync`` + ledger path takes. A second run with the
spool off (ack on receipt) in the same process gives the baseline the spool costs against.

Run: ``.venv/bin/python bench/spool_throughput.py [--devices 1000] [--seconds 10]``
``--rate R`` paces each sender at R frames/s (ack latency below saturation: 1,000 senders
at 2/s is 20k records/s); ``--spool-only`` skips the ack-on-receipt run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from hotpath import decoded, frames

from fleetgate.config import AckLevel
from fleetgate.pipeline import AckPolicy, Ledger, Pipeline, Router
from fleetgate.pipeline.spool import Spool, SpoolSettings
from fleetgate.records import Record


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def run(directory: Path | None, batches: list[list[Record]], devices: int,
              seconds: float, rate: float = 0.0) -> dict[str, float]:
    spool = None
    if directory is not None:
        spool = Spool(SpoolSettings(directory), Ledger())
        spool.open()
        spool.start()
    level = AckLevel.SPOOL if spool is not None else AckLevel.RECEIVE
    pipeline = Pipeline({}, Router({}), AckPolicy(level, None), ack_timeout_s=30,
                        spool=spool)
    latencies: list[float] = []
    acked = 0
    deadline = time.perf_counter() + seconds

    async def device(index: int) -> None:
        nonlocal acked
        position = index
        # Paced senders start spread over one period, like trackers that connected apart.
        due = time.perf_counter() + (index / devices / rate if rate else 0.0)
        while time.perf_counter() < deadline:
            if rate:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                due += 1 / rate
            records = batches[position % len(batches)]
            position += devices
            started = time.perf_counter()
            if not await pipeline.accept(records):
                raise RuntimeError("frame not acknowledged")
            latencies.append(time.perf_counter() - started)
            acked += len(records)

    started = time.perf_counter()
    await asyncio.gather(*(device(n) for n in range(devices)))
    elapsed = time.perf_counter() - started
    commits = spool._taken if spool is not None else 0
    if spool is not None:
        await spool.close()
    return {"records_per_s": acked / elapsed, "frames": len(latencies), "commits": commits,
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="frames/s per sender (0: as fast as acks allow)")
    parser.add_argument("--spool-only", action="store_true")
    args = parser.parse_args()
    # Records are rebuilt per use by the pipeline only in their offset; sharing them across
    # senders keeps the generator's cost out of the figure.
    batches = decoded(frames(5000))
    import uvloop

    results = {}
    runs = [("spool off (ack on receipt)", False), ("spool on (ack after fdatasync)", True)]
    for label, spooled in runs[1:] if args.spool_only else runs:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / "spool" if spooled else None
            results[label] = uvloop.run(
                run(directory, batches, args.devices, args.seconds, args.rate)
            )
    for label, result in results.items():
        per_commit = result["frames"] / result["commits"] if result["commits"] else 0
        print(f"{label}: {result['records_per_s']:,.0f} records/s, ack p50 "
              f"{result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
              + (f", {result['commits']:,.0f} commits ({per_commit:.0f} frames each)"
                 if result["commits"] else ""))


if __name__ == "__main__":
    main()
