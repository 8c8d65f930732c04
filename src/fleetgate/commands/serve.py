"""``fleetgate serve`` and ``fleetgate demo``."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from fleetgate.app import announce, run_loop, serve
from fleetgate.config import Config, load_config
from fleetgate.observability.logging import setup_logging
from fleetgate.supervisor import Supervisor, worker_count

log = logging.getLogger("fleetgate")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run the server (embedded defaults when no config is given)"
    )
    add_config_argument(parser)
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        help="worker processes sharing the device ports, 0 = one per CPU core "
        "(overrides the config key workers; default 1)",
    )
    parser.set_defaults(handler=run_serve)



def _worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError("must be between 0 and 256")
    return value


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-config",
        dest="config",
        default=os.environ.get("FLEETGATE_CONFIG"),
        help="JSON or TOML config file (Tesla's config.json works as is); "
        "FLEETGATE_* environment variables override it",
    )


def load(args: argparse.Namespace) -> Config:
    # Log set-up first, so config warnings are printed in the configured format.
    setup_logging()
    config = load_config(args.config)
    setup_logging(config.log_level, config.json_log_enable)
    return config


def run_serve(args: argparse.Namespace) -> int:
    config = load(args)
    if args.workers is not None:
        config = config.model_copy(update={"workers": args.workers})
    count = worker_count(config)
    if count > 1:
        return Supervisor(config, count).run()
    run_loop(serve(config, ready=announce))
    return 0
