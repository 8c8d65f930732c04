"""``fleetgate decode teltonika|tesla HEX``: decode a captured frame and print it as JSON.

Exit codes (also in ``--help``):

* 0: the frame decoded; its JSON is on stdout.
* 1: the input is hex but not a frame of that protocol (the reason on stderr, nothing on
  stdout), or it decoded with a warning (a Teltonika CRC mismatch: JSON on stdout, the
  warning on stderr).
* 2: no frame to look at: the input is not hex, is empty, or stdin cannot be read.
* 141: stdout was closed before the JSON was written (``| head``); nothing else is printed,
  as for any tool killed by SIGPIPE (128 + 13).
"""

from __future__ import annotations

import argparse
import os
import string
import sys
from collections.abc import Callable
from typing import Any, Final

import orjson

EXIT_OK: Final = 0
EXIT_NOT_A_FRAME: Final = 1
EXIT_NO_INPUT: Final = 2
EXIT_CLOSED_PIPE: Final = 141

EXIT_CODES_HELP: Final = """\
exit codes:
  0    the frame decoded; JSON on stdout
  1    not a frame of that protocol (reason on stderr), or decoded with a warning
       (Teltonika CRC mismatch: JSON on stdout, warning on stderr)
  2    the input is not hex, or empty
  141  stdout closed before the JSON was written (e.g. | head)
"""

_HEX_DIGITS: Final = frozenset(string.hexdigits)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "decode",
        help="decode a captured frame and print it as JSON",
        description="Decode one captured frame (given as hex) and print it as JSON.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    teltonika = protocols.add_parser(
        "teltonika",
        help="one Teltonika TCP frame, as hex",
        description="Decode one Teltonika TCP frame (IMEI login, keep-alive, AVL or GPRS).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    teltonika.add_argument("hex", help="frame bytes as hex ('-' reads stdin); spaces allowed")
    teltonika.add_argument(
        "--io16-group",
        action="store_true",
        help="records carry Traccar's 'extended' 16-byte IO group (older FM devices)",
    )
    teltonika.set_defaults(handler=decode_teltonika)
    tesla = protocols.add_parser(
        "tesla",
        help="one Tesla fleet-telemetry WebSocket frame (flatbuffers envelope), as hex",
        description=(
            "Decode one Tesla fleet-telemetry frame (flatbuffers envelope, protobuf payload) "
            "with the server's transforms and checks."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tesla.add_argument("hex", help="frame bytes as hex ('-' reads stdin); spaces allowed")
    tesla.add_argument(
        "--vin", default="", help="VIN the client certificate would have given (default: empty)"
    )
    tesla.set_defaults(handler=decode_tesla)


class _RefusedError(Exception):
    """Decoding stopped: the message to print and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _read_hex(text: str) -> bytes:
    if text == "-":
        try:
            text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _RefusedError(f"cannot read stdin: {exc}", EXIT_NO_INPUT) from None
    cleaned = "".join(text.split())
    if cleaned[:2] in ("0x", "0X"):
        cleaned = cleaned[2:]
    if not cleaned:
        raise _RefusedError("no input: give the frame's bytes as hex", EXIT_NO_INPUT)
    for position, char in enumerate(cleaned):
        if char not in _HEX_DIGITS:
            raise _RefusedError(
                f"not hex: {char!r} at position {position} is not a hex digit", EXIT_NO_INPUT
            )
    if len(cleaned) % 2:
        raise _RefusedError(
            f"not hex: {len(cleaned)} hex digits, an odd number (each byte is two)",
            EXIT_NO_INPUT,
        )
    return bytes.fromhex(cleaned)


def _write_stdout(text: str) -> bool:
    """Write and flush ``text``; False when the reader has gone (closed pipe)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the same error again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False
    return True


def _run(decode: Callable[[bytes], tuple[Any, str | None]], text: str) -> int:
    """Read hex, decode, print JSON; a warning after the JSON makes the exit code 1."""
    try:
        body, warning = decode(_read_hex(text))
    except _RefusedError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return exc.code
    if not _write_stdout(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n"):
        return EXIT_CLOSED_PIPE
    if warning is not None:
        print(f"fleetgate: {warning}", file=sys.stderr)
        return EXIT_NOT_A_FRAME
    return EXIT_OK


def decode_teltonika(args: argparse.Namespace) -> int:
    from fleetgate.protocols.teltonika import TeltonikaDecodeError, decode_frame, frame_to_json

    def decode(data: bytes) -> tuple[Any, str | None]:
        try:
            decoded = decode_frame(data, io16_group=args.io16_group)
        except TeltonikaDecodeError as exc:
            raise _RefusedError(f"not a Teltonika frame: {exc}", EXIT_NOT_A_FRAME) from None
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
    from fleetgate.protocols.tesla.envelope import (
        MESSAGE_STREAM,
        MESSAGE_STREAM_ACK,
        EnvelopeError,
        parse_envelope,
    )
    from fleetgate.protocols.tesla.transforms import PayloadError

    def decode(data: bytes) -> tuple[Any, str | None]:
        try:
            envelope = parse_envelope(data)
        except EnvelopeError as exc:
            raise _RefusedError(
                f"not a Tesla frame (flatbuffers envelope): {exc}", EXIT_NOT_A_FRAME
            ) from None
        # Many byte strings read as an envelope with nothing in it; a vehicle's frame holds
        # a stream message (type 4), a server reply may be an ack (type 5).
        if not envelope.has_message or envelope.message_type not in (
            MESSAGE_STREAM,
            MESSAGE_STREAM_ACK,
        ):
            raise _RefusedError(
                f"not a Tesla frame: the envelope holds no message (message_type "
                f"{envelope.message_type}, {len(data)} bytes); the server would answer it "
                "with two acks",
                EXIT_NOT_A_FRAME,
            )
        try:
            return decode_frame_to_json(data, args.vin), None
        except PayloadError as exc:
            raise _RefusedError(
                f"not a valid Tesla record: {exc} (the server sends the error reply)",
                EXIT_NOT_A_FRAME,
            ) from None

    return _run(decode, args.hex)
