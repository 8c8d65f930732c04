"""Every command and option of ``fleetgate`` says what it does and what its default is."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from fleetgate.cli import build_parser


def parsers(
    parser: argparse.ArgumentParser, path: str = "fleetgate"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def shows_a_default(action: argparse.Action) -> bool:
    default = action.default
    if action.nargs == 0 or default in (None, argparse.SUPPRESS, False, [], ""):
        return False
    return not isinstance(action, argparse._SubParsersAction)


def test_every_option_has_help_and_shows_its_default() -> None:
    missing_help: list[str] = []
    missing_default: list[str] = []
    for path, parser in parsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            if isinstance(action, argparse._SubParsersAction):
                missing_help += [
                    f"{path} {choice.dest}" for choice in action._choices_actions if not choice.help
                ]
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing_help.append(f"{path} {name}")
            elif shows_a_default(action) and f"(default: {action.default})" not in " ".join(
                text.split()
            ):
                missing_default.append(f"{path} {name}={action.default!r}")
    assert missing_help == []
    assert missing_default == []
