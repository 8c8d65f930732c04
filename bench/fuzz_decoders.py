"""A long fuzz run of every decoder that reads bytes from outside: each may raise only its
documented error, the Teltonika connection and the Tesla frame processor never raise.

Inputs are real frames (the shared test vectors, simulator frames) with bytes flipped,
inserted and cut, plus plain random bytes, fed in random chunkings where the decoder reads a
stream. The suite runs the same checks briefly with hypothesis on every ``make test``; this
script runs them for as long as asked and prints how many inputs each target took, so the
count can be documented (docs/benchmarks.md, "Fuzzing").

Run: ``.venv/bin/python bench/fuzz_decoders.py --inputs 1000000 [--seed 1]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleetgate.pipeline.spool_format import TornEntry, encode_entry, read_entry  # noqa: E402
from fleetgate.protocols.mqtt import GatewayDecoder, format_payload  # noqa: E402
from fleetgate.protocols.teltonika import (  # noqa: E402
    TcpConnection,
    TeltonikaDecodeError,
    decode_udp_datagram,
)
from fleetgate.protocols.tesla.core import FrameProcessor  # noqa: E402
from fleetgate.protocols.tesla.envelope import build_stream_envelope  # noqa: E402
from fleetgate.protocols.tesla.identity import VehicleIdentity  # noqa: E402
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd  # noqa: E402
from fleetgate.records import Record  # noqa: E402
from tests.teltonika_vectors import VECTORS_PATH  # noqa: E402


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out)) if out else 0
        action = rng.random()
        if action < 0.5 and out:
            out[at] = rng.randrange(256)
        elif action < 0.75:
            out[at:at] = rng.randbytes(rng.randint(1, 4))
        elif out:
            del out[at : at + rng.randint(1, 8)]
    return bytes(out)


def corpus() -> dict[str, list[bytes]]:
    vectors = json.loads(VECTORS_PATH.read_text())
    tcp = [bytes.fromhex(v["hex"]) for v in vectors if v["direction"] == "device-to-server"]
    payload = vd.Payload()
    datum = payload.data.add()
    datum.key = vd.VehicleSpeed
    datum.value.double_value = 42.0
    payload.created_at.FromMilliseconds(1_767_225_600_000)
    tesla = [
        build_stream_envelope(
            txid=b"tx", topic=topic, payload=payload.SerializeToString(),
            sender_id=b"vehicle_device.5YJ3E1EA7KF000001", device_type=b"vehicle_device",
            device_id=b"5YJ3E1EA7KF000001", created_at=1, delivered_at_epoch_ms=1,
            message_id=b"m",
        )
        for topic in (b"V", b"alerts", b"errors", b"connectivity")
    ]
    mqtt = [
        format_payload(2500, topic="vehicles/gw-1/engine/rpm", ts=1_767_225_600_000, seq=7),
        b"2500",
        b'{"value": "D", "unit": null}',
    ]
    spool = [encode_entry(5, [Record("teltonika", "356307042441013", "position", 1, 2,
                                     {"speed": 3, "io": {"66": 12000}}, b"\x01\x02")])]
    return {"tcp": tcp, "tesla": tesla, "mqtt": mqtt, "spool": spool}


def teltonika_tcp(rng: random.Random, data: bytes) -> None:
    connection = TcpConnection()
    connection.receive_data(b"\x00\x0f356307042441013")
    if connection.imei is not None:
        connection.accept_imei(True)
    at = 0
    while at < len(data):
        step = rng.randint(1, 64)
        connection.receive_data(data[at : at + step])  # must never raise
        at += step


def teltonika_udp(rng: random.Random, data: bytes) -> None:
    with contextlib.suppress(TeltonikaDecodeError):
        decode_udp_datagram(data)


IDENTITY = VehicleIdentity("5YJ3E1EA7KF000001", "vehicle_device")


def tesla(rng: random.Random, data: bytes) -> None:
    processor = FrameProcessor(IDENTITY, configured_topics=None, socket_id="s")
    processor.process(data, 1_767_225_600_000)  # must never raise


DECODER = GatewayDecoder(hmac_keys={"gw-1": b"key"}, max_drift_ms=60_000)


def mqtt(rng: random.Random, data: bytes) -> None:
    topic = rng.choice(["vehicles/gw-1/engine/rpm", "vehicles/gw-1/vehicle/gear_status",
                        "vehicles/x/y", "vehicles/gw-2/diagnostics/dtc"])
    DECODER.decode(topic, data, 1_767_225_600_000)  # returns a Record or a Refusal


def spool(rng: random.Random, data: bytes) -> None:
    with contextlib.suppress(TornEntry):
        read_entry(data, 0)


TARGETS: dict[str, tuple[str, Callable[[random.Random, bytes], None]]] = {
    "teltonika-tcp": ("tcp", teltonika_tcp),
    "teltonika-udp": ("tcp", teltonika_udp),
    "tesla-frame": ("tesla", tesla),
    "mqtt-payload": ("mqtt", mqtt),
    "spool-entry": ("spool", spool),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    seeds = corpus()
    failures = 0
    for name, (kind, target) in TARGETS.items():
        started = time.perf_counter()
        for n in range(args.inputs):
            base = rng.choice(seeds[kind])
            data = rng.randbytes(rng.randint(0, 300)) if n % 10 == 0 else mutate(rng, base)
            try:
                target(rng, data)
            except Exception:
                failures += 1
                print(f"{name}: input {n} ({data.hex()}) raised:", file=sys.stderr)
                traceback.print_exc()
                if failures > 10:
                    return 1
        elapsed = time.perf_counter() - started
        print(f"{name:<14} {args.inputs:>10,} inputs in {elapsed:6.1f} s, none raised "
              f"an undocumented error" if not failures else f"{name}: failures {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
