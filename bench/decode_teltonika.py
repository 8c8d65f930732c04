"""Teltonika decode throughput on one core, against the npm baseline, in the same run.

Frames: codec 8E, 20 IO elements per record (8 one-byte, 6 two-byte, 4 four-byte, 2
eight-byte), ``--records-per-frame`` records per frame. Measured stages:

* ``avl``: the codec alone (``decode_avl_body``: bytes → AvlRecord tuples);
* ``tcp``: the sans-I/O connection (framing + CRC-16 + codec) as the server runs it;
* ``records``: ``tcp`` plus building fleetgate Records (named IO values, JSON-ready data);
* ``npm``: complete-teltonika-parser on the same frames (hex strings, its input format),
  when node and ``bench/node_modules`` are present (``make bench`` installs them).

Run: ``.venv/bin/python bench/decode_teltonika.py [--seconds 3] [--records-per-frame 10]``
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fleetgate.protocols.teltonika.avl import decode_avl_body
from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei
from fleetgate.protocols.teltonika.events import AvlFrame
from fleetgate.protocols.teltonika.model import CODEC_8E, AvlRecord
from fleetgate.protocols.teltonika.records import to_records

BENCH_DIR = Path(__file__).resolve().parent
RECEIVED_AT = 1_700_000_500_000


def make_record(rng: random.Random, timestamp_ms: int) -> AvlRecord:
    io: dict[int, int | bytes] = {}
    for io_id in (239, 240, 21, 69, 1, 2, 3, 200):
        io[io_id] = rng.randrange(0, 2)
    for io_id in (66, 67, 68, 181, 182, 24):
        io[io_id] = rng.randrange(0, 65536)
    for io_id in (16, 199, 241, 12):
        io[io_id] = rng.randrange(0, 2**32)
    for io_id in (11, 14):
        io[io_id] = rng.randrange(0, 2**63)
    return AvlRecord(
        timestamp_ms=timestamp_ms, priority=0,
        longitude=round(rng.uniform(-180, 180), 7), latitude=round(rng.uniform(-90, 90), 7),
        altitude=rng.randrange(0, 500), angle=rng.randrange(0, 360),
        satellites=rng.randrange(0, 20), speed=rng.randrange(0, 150), event_io_id=0, io=io,
    )


def make_frames(count: int, per_frame: int) -> list[bytes]:
    rng = random.Random(42)
    start = 1_700_000_000_000
    return [
        encode_avl_frame(CODEC_8E, [make_record(rng, start + i * 1000 + j) for j in range(per_frame)])
        for i in range(count)
    ]


def measure(label: str, seconds: float, frames: list[bytes], step: Callable[[bytes], int]) -> float:
    for item in frames[:50]:
        step(item)
    records = 0
    started = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        for item in frames:
            records += step(item)
        elapsed = time.perf_counter() - started
    rate = records / elapsed
    print(f"{label:<10} {rate:>12,.0f} records/s")
    return rate


def run_npm(frames: list[bytes], seconds: float) -> float | None:
    node = shutil.which("node")
    if node is None or not (BENCH_DIR / "node_modules" / "complete-teltonika-parser").exists():
        print("npm        (skipped: run `make bench` to install node_modules)")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".hex", delete=False) as handle:
        handle.write("\n".join(item.hex() for item in frames))
        path = handle.name
    output = subprocess.run(
        [node, str(BENCH_DIR / "node" / "teltonika_decode.js"), path, str(seconds)],
        check=True, capture_output=True, text=True, cwd=BENCH_DIR,
    ).stdout
    Path(path).unlink()
    rate = float(json.loads(output)["records_per_s"])
    print(f"{'npm':<10} {rate:>12,.0f} records/s  (complete-teltonika-parser, node)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--records-per-frame", type=int, default=10)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    frames = make_frames(args.frames, args.records_per_frame)
    size = sum(map(len, frames)) / len(frames)
    print(f"codec 8E, 20 IO elements/record, {args.records_per_frame} records/frame, "
          f"{size:.0f} bytes/frame, {args.seconds:.0f} s per stage, one core")

    bodies = [item[8:-4] for item in frames]
    avl = measure("avl", args.seconds, bodies, lambda body: len(decode_avl_body(body, CODEC_8E)))

    def through_connection(with_records: bool) -> Callable[[bytes], int]:
        connection = TcpConnection()
        connection.receive_data(encode_imei("356307042441013"))
        connection.accept_imei(True)

        def step(item: bytes) -> int:
            count = 0
            for event in connection.receive_data(item):
                if isinstance(event, AvlFrame):
                    if with_records:
                        # Received just after the records' times: a receive time of 0
                        # would flag every device clock as implausible (not the hot path).
                        count += len(to_records("356307042441013", event, RECEIVED_AT))
                    else:
                        count += len(event.records)
            return count

        return step

    tcp = measure("tcp", args.seconds, frames, through_connection(False))
    records = measure("records", args.seconds, frames, through_connection(True))
    npm = run_npm(frames, args.seconds)
    if npm:
        print(f"ratio vs npm: avl {avl / npm:.2f}x, tcp {tcp / npm:.2f}x, records {records / npm:.2f}x")


if __name__ == "__main__":
    main()
