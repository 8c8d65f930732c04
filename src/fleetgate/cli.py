"""``fleetgate`` command line: serve, config, demo, decode, sim, certs, tesla, token, stream,
consume, command, bench.

Each command group lives in its own module under :mod:`fleetgate.commands` and adds its
parsers in ``register(subparsers)``; the parser's ``handler`` returns the exit code.
Configuration problems print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from fleetgate import __version__
from fleetgate.runtime import StartupError
from fleetgate.settings import ConfigError

# Each is fleetgate.commands.<name>, registering the subcommand <name>. Imported on demand:
# `fleetgate serve` then never loads the simulators, load generator and consumers (about
# 2 MiB of a serving process's memory).
COMMANDS = (
    "serve", "config", "demo", "decode", "sim", "certs", "tesla", "token", "stream",
    "consume", "command", "bench",
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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``only``) just that subcommand's part of it."""
    parser = argparse.ArgumentParser(
        prog="fleetgate",
        description="Vehicle telemetry gateway: Tesla vehicles, Teltonika trackers, CAN gateways.",
    )
    parser.add_argument("--version", action="version", version=f"fleetgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (only,) if only in COMMANDS else COMMANDS:
        importlib.import_module(f"fleetgate.commands.{name}").register(subparsers)
    _show_defaults(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(words)
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
