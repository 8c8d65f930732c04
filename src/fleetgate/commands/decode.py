"""``fleetgate decode teltonika HEX``: decode a captured frame and print it as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "decode", help="decode a captured frame and print it as JSON"
    )
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    teltonika = protocols.add_parser("teltonika", help="one Teltonika TCP frame, as hex")
    teltonika.add_argument("hex", help="frame bytes as hex ('-' reads stdin); spaces allowed")
    teltonika.add_argument(
        "--io16-group", action="store_true",
        help="records carry Traccar's 'extended' 16-byte IO group (older FM devices)",
    )
    teltonika.set_defaults(handler=decode_teltonika)
    tesla = protocols.add_parser(
        "tesla", help="one Tesla fleet-telemetry WebSocket frame (flatbuffers envelope), as hex"
    )
    tesla.add_argument("hex", help="frame bytes as hex ('-' reads stdin); spaces allowed")
    tesla.add_argument("--vin", default="", help="VIN the certificate would have given")
    tesla.set_defaults(handler=decode_tesla)


def _read_hex(text: str) -> bytes:
    if text == "-":
        text = sys.stdin.read()
    cleaned = "".join(text.split()).removeprefix("0x")
    return bytes.fromhex(cleaned)


def decode_teltonika(args: argparse.Namespace) -> int:
    from fleetgate.protocols.teltonika import TeltonikaDecodeError, decode_frame, frame_to_json

    try:
        data = _read_hex(args.hex)
    except ValueError as exc:
        print(f"fleetgate: not hex: {exc}", file=sys.stderr)
        return 2
    try:
        decoded = decode_frame(data, io16_group=args.io16_group)
    except TeltonikaDecodeError as exc:
        print(f"fleetgate: cannot decode frame: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(frame_to_json(decoded), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    if decoded.crc_ok is False:
        # Still printed: an operator wants to see what the device tried to say.
        print(
            f"fleetgate: crc mismatch (stored {decoded.crc_stored:04x}, computed "
            f"{decoded.crc_computed:04x}): a server discards this frame and sends no ack",
            file=sys.stderr,
        )
        return 1
    return 0


def decode_tesla(args: argparse.Namespace) -> int:
    from fleetgate.protocols.tesla.core import decode_frame_to_json
    from fleetgate.protocols.tesla.envelope import EnvelopeError
    from fleetgate.protocols.tesla.transforms import PayloadError

    try:
        data = _read_hex(args.hex)
    except ValueError as exc:
        print(f"fleetgate: not hex: {exc}", file=sys.stderr)
        return 2
    try:
        decoded = decode_frame_to_json(data, args.vin)
    except (EnvelopeError, PayloadError) as exc:
        print(f"fleetgate: cannot decode frame: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(decoded, option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    return 0
