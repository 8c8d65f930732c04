"""``fleetgate decode teltonika HEX``: decode a captured frame and print it as JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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


class _RefusedError(Exception):
    """Decoding stopped: the message to print and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _read_hex(text: str) -> bytes:
    if text == "-":
        text = sys.stdin.read()
    cleaned = "".join(text.split()).removeprefix("0x")
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise _RefusedError(f"not hex: {exc}", 2) from None


def _run(decode: Callable[[bytes], tuple[Any, str | None]], text: str) -> int:
    """Read hex, decode, print JSON; a warning after the JSON makes the exit code 1."""
    try:
        body, warning = decode(_read_hex(text))
    except _RefusedError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return exc.code
    sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    if warning is not None:
        print(f"fleetgate: {warning}", file=sys.stderr)
        return 1
    return 0


def decode_teltonika(args: argparse.Namespace) -> int:
    from fleetgate.protocols.teltonika import TeltonikaDecodeError, decode_frame, frame_to_json

    def decode(data: bytes) -> tuple[Any, str | None]:
        try:
            decoded = decode_frame(data, io16_group=args.io16_group)
        except TeltonikaDecodeError as exc:
            raise _RefusedError(f"cannot decode frame: {exc}", 1) from None
        warning = None
        if decoded.crc_ok is False:
            # Still printed: an operator wants to see what the device tried to say.
            warning = (
                f"crc mismatch (stored {decoded.crc_stored:04x}, computed "
                f"{decoded.crc_computed:04x}): a server discards this frame and sends no ack"
            )
        return frame_to_json(decoded), warning

    return _run(decode, args.hex)


def decode_tesla(args: argparse.Namespace) -> int:
    from fleetgate.protocols.tesla.core import decode_frame_to_json
    from fleetgate.protocols.tesla.envelope import EnvelopeError
    from fleetgate.protocols.tesla.transforms import PayloadError

    def decode(data: bytes) -> tuple[Any, str | None]:
        try:
            return decode_frame_to_json(data, args.vin), None
        except (EnvelopeError, PayloadError) as exc:
            raise _RefusedError(f"cannot decode frame: {exc}", 1) from None

    return _run(decode, args.hex)
