"""``fleetgate serve`` and ``fleetgate demo``."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import Any

from fleetgate import preflight
from fleetgate.app import announce, run_loop, serve
from fleetgate.config import (
    Config,
    load_config,
    read_config_file,
    routing_problems,
    worker_count,
)
from fleetgate.observability.logging import setup_logging
from fleetgate.observability.startup_log import held_log_records, replay
from fleetgate.settings import ConfigError

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
    """The checked configuration, with logging set up as it says.

    Warnings logged while the configuration is read are held and written once logging is
    configured, in its format. Every problem (types, routing, files, missing extras) is
    reported at once by the :class:`ConfigError` raised.
    """
    with held_log_records() as held:
        try:
            config = load_config(args.config, routing=False)
            problems = routing_problems(config) + preflight.problems(config)
            if problems:
                raise ConfigError.of(problems)
        except ConfigError:
            setup_logging(json_lines=_json_log_wanted(args.config))
            replay(held)
            raise
    setup_logging(config.log_level, config.json_log_enable)
    replay(held)
    return config


def _json_log_wanted(path: str | None) -> bool:
    """``json_log_enable`` of a config file that did not load (its warnings still need a
    format); environment overrides included."""
    value: object = os.environ.get("FLEETGATE_JSON_LOG_ENABLE")
    if value is None and path is not None:
        try:
            data = read_config_file(path)
        except ConfigError:
            return False
        value = next((v for k, v in data.items() if k.lower() == "json_log_enable"), False)
    return value is True or str(value).lower() == "true"


def run_serve(args: argparse.Namespace) -> int:
    config = load(args)
    if args.workers is not None:
        config = config.model_copy(update={"workers": args.workers})
    count = worker_count(config)
    # "workers": 0 is one per core; on one core that is one process, which must not share
    # its ports (nor refuse commands for devices another worker could hold).
    config = config.model_copy(update={"workers": count})
    warn_shared_node_id(config)
    if count > 1:
        from fleetgate.supervisor import Supervisor  # the worker processes, when configured

        return Supervisor(config, count).run()
    run_loop(serve(config, ready=announce))
    return 0


# Sinks that write to a log other nodes share (record ids <node_id>-<offset> must differ).
_SHARED_LOG_SINKS = ("kafka", "nats")


def warn_shared_node_id(config: Config) -> None:
    """Record ids and command routing name this node by ``node_id``; its default, the host
    name, is the same for every server on one host, and ids that collide in a shared log
    are de-duplicated away by consumers."""
    if config.node_id:
        return
    shared = sorted(
        {sink for sinks in config.records.values() for sink in sinks} & set(_SHARED_LOG_SINKS)
    )
    if config.teltonika.command_routing is not None:
        shared.append("teltonika.command_routing")
    if shared:
        # Info, not a warning: one node per host (a Tesla config.json) is right as it is.
        log.info(
            "node_id not set: record ids and command routing name this node %r (the host "
            "name); servers on one host sharing %s need a node_id each, or their record "
            "ids collide",
            socket.gethostname(),
            ", ".join(shared),
        )
