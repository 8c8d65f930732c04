"""``fleetgate`` command line: serve, config, demo, decode, sim, certs, tesla, token, stream,
consume, command, bench.

Each command group lives in its own module under :mod:`fleetgate.commands` and adds its
parsers in ``register(subparsers)``; the parser's ``handler`` returns the exit code.
Configuration problems print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fleetgate import __version__
from fleetgate.commands import (
    bench,
    certs,
    command,
    config,
    consume,
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

COMMANDS = (
    serve, config, demo, decode, sim, certs, tesla, token, stream, consume, command, bench
)

EXIT_USAGE = 2


class DefaultsShown(argparse.HelpFormatter):
    """Help that ends each option with its default, when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (
            text
            and "%(default)" not in text
            and "(default:" not in text
            and action.nargs != 0
            and default not in (None, False, "", [], argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    own: Any = parser.formatter_class
    if not (isinstance(own, type) and issubclass(own, DefaultsShown)):
        # Keep what the parser chose (raw epilog text...) and add the defaults.
        combined: Any = type("DefaultsShown", (DefaultsShown, own), {})
        parser.formatter_class = combined
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetgate",
        description="Vehicle telemetry gateway: Tesla vehicles, Teltonika trackers, CAN gateways.",
    )
    parser.add_argument("--version", action="version", version=f"fleetgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMANDS:
        group.register(subparsers)
    _show_defaults(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"fleetgate: config error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
