"""``fleetgate`` command line: serve, demo, decode, sim, certs, tesla, token, stream, command,
bench.

Each command group lives in its own module under :mod:`fleetgate.commands` and adds its
parsers in ``register(subparsers)``; the parser's ``handler`` returns the exit code.
Configuration problems print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleetgate import __version__
from fleetgate.commands import (
    bench,
    certs,
    command,
    decode,
    demo,
    serve,
    sim,
    stream,
    tesla,
    token,
)
from fleetgate.runtime import StartupError
from fleetgate.settings import ConfigError

COMMANDS = (serve, demo, decode, sim, certs, tesla, token, stream, command, bench)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetgate",
        description="Vehicle telemetry gateway: Tesla vehicles, Teltonika trackers, CAN gateways.",
    )
    parser.add_argument("--version", action="version", version=f"fleetgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMANDS:
        group.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"fleetgate: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
