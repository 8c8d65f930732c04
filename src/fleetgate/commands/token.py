"""``fleetgate token``: print an API token signed with the configured key.

The key is the server's: ``api.auth`` of the same config (or the secret the server generated
in the data directory on the embedded defaults, created here if the server has not run yet).
The token is alone on the last line, so ``TOKEN=$(fleetgate token ... | tail -n 1)`` works.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fleetgate.api.auth import SCOPES, Authenticator, parse_duration, parse_scopes
from fleetgate.commands.serve import add_config_argument
from fleetgate.config import load_config
from fleetgate.records import format_rfc3339_ms

EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "token",
        help="print an API token (REST, /stream, dashboard) signed with the configured key",
    )
    add_config_argument(parser)
    parser.add_argument("--sub", required=True, help="who the token is for (its subject)")
    parser.add_argument("--ttl", default="1h", help="lifetime: 3600, 90s, 15m, 1h, 7d (default 1h)")
    parser.add_argument(
        "--scope",
        default="read,stream",
        help=f"comma-separated scopes of {', '.join(SCOPES)} (default read,stream)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        ttl_s = parse_duration(args.ttl)
        scopes = parse_scopes(args.scope)
    except ValueError as exc:
        print(f"fleetgate token: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = load_config(args.config)
    auth = Authenticator(config.api.auth, config.data_path)
    if not auth.enabled:
        print("fleetgate token: api.auth.enabled is false: no tokens needed", file=sys.stderr)
        return EXIT_USAGE
    now = time.time()
    token = auth.issue(args.sub, ttl_s, scopes, now=now)
    key = (
        str(auth.secret_path)
        if auth.secret_path is not None
        else f"the configured {config.api.auth.algorithm} key"
    )
    expires = format_rfc3339_ms(int((now + ttl_s) * 1000))
    print(
        f"token for {args.sub!r}, scopes {' '.join(sorted(scopes))}, expires {expires}, "
        f"signed with {key}:"
    )
    print(token)
    return 0
