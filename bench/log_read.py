"""How fast ``fleetgate consume`` reads the shared log back (Kafka, Tansu memory-only).

Writes ``--records`` Teltonika records (the real decoder's output for a 10-record codec 8E
frame, 20 IO elements each, spread over ``--devices`` trackers) to ``<namespace>_position``
exactly as the kafka sink sends them (record JSON, Tesla's headers and ``record_id``), with
a bare producer so writing is quick; then runs ``fleetgate consume --from-beginning``
printing to /dev/null and reports records per second of wall time and of the reader's CPU.
A dashboard node (``api.stream.source``) and a node fed with ``consume --feed`` read the
whole log this way, so this is the ceiling of one reader process.

Run: ``.venv/bin/python bench/log_read.py --records 200000``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402

from fleetgate.forms import wire_payload  # noqa: E402
from fleetgate.protocols.teltonika import decode_frame  # noqa: E402
from fleetgate.protocols.teltonika.encoder import encode_avl_frame  # noqa: E402
from fleetgate.protocols.teltonika.events import AvlFrame  # noqa: E402
from fleetgate.protocols.teltonika.model import CODEC_8E, AvlRecord  # noqa: E402
from fleetgate.protocols.teltonika.records import to_records  # noqa: E402
from fleetgate.records import record_metadata, set_offset  # noqa: E402
from tests.integration.services import tansu_server  # noqa: E402

NAMESPACE = "bench"


def frame() -> bytes:
    records = []
    for n in range(10):
        io: dict[int, int | bytes] = {239: 1, 240: 1, 21: 4, 66: 12800, 67: 4100, 16: 123456}
        extra = 1000
        while len(io) < 20:
            io[extra] = n + extra
            extra += 1
        records.append(AvlRecord(1_700_000_000_000 + n * 1000, 0, 25.28, 54.68, 100, 90, 10,
                                 50, 0, io))
    return encode_avl_frame(CODEC_8E, records)


def fill(bootstrap: str, count: int, devices: int) -> None:
    raw = frame()
    decoded = decode_frame(raw)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    offset = 0
    while offset < count:
        imei = str(356307042441013 + (offset // 10) % devices)
        for record in to_records(imei, AvlFrame(CODEC_8E, decoded.records, raw), 1_700_000_000_000):
            offset += 1
            set_offset(record, offset)
            headers = record_metadata(record)
            headers["record_id"] = f"bench-{offset}"
            while True:
                try:
                    producer.produce(f"{NAMESPACE}_{record.topic}", wire_payload(record),
                                     imei.encode(), headers=list(headers.items()))
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetgate-logread-") as tmp:
        broker = tansu_server(Path(tmp)).start()
        try:
            bootstrap = broker.info["bootstrap"]
            fill(bootstrap, args.records, args.devices)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            with open(os.devnull, "wb") as sink:
                done = subprocess.run(
                    [sys.executable, "-m", "fleetgate", "consume", "--kafka", bootstrap,
                     "--namespace", NAMESPACE, "--from-beginning", "--idle-exit", "2"],
                    stdout=sink, stderr=subprocess.PIPE, text=True, check=True,
                )
            wall = time.monotonic() - started - 2.0  # the idle exit's wait
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(json.dumps({
                "records": args.records,
                "summary": done.stderr.strip().splitlines()[-1],
                "records_per_s": round(args.records / wall),
                "reader_cpu_s": round(cpu, 2),
                "records_per_cpu_s": round(args.records / cpu),
            }))
        finally:
            broker.destroy()


if __name__ == "__main__":
    main()
