"""``fleetgate consume``: read the shared record log (Kafka or NATS JetStream) back.

By default it prints every record in its one JSON form, one per line, on standard output,
as the nodes wrote them (de-duplicated by ``record_id`` within ``--window`` records). With
``--feed`` the records go into the pipeline of ``--config`` instead: its ``records``
routing, its embedded store and, when the config enables it, its API, dashboard and
``/stream``. That is a dashboard-only or sink-only node fed from the log; its device
listeners stay closed.

Where to read: ``--kafka SERVERS`` or ``--nats URL``, or the ``kafka`` / ``nats`` section
of ``--config`` (``--log`` chooses when it has both); topics ``<namespace>_<topic>``
(``--namespace``, default the config's). ``--group`` reads as a consumer group member
and commits what was handled (a restart resumes after it); without it the command reads
alone from the end of the log, or from its start with ``--from-beginning``.

Exit codes: 0 when stopped (SIGINT/SIGTERM, ``--count``, ``--idle-exit``), 1 when the log
cannot be read, 2 for bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from fleetgate.commands.serve import add_config_argument, load
from fleetgate.config import Config, load_config
from fleetgate.observability.logging import setup_logging
from fleetgate.pipeline.spool_format import UnspoolableRecordError
from fleetgate.recordlog import (
    LOG_KINDS,
    LogFollower,
    LogKind,
    LogReader,
    LogUnavailableError,
    ReadOptions,
    open_reader,
)
from fleetgate.recordlog.dedup import DEFAULT_WINDOW
from fleetgate.records import Record, record_jsons
from fleetgate.settings import ConfigError

log = logging.getLogger("fleetgate.consume")

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "consume",
        help="read the shared record log (Kafka, NATS JetStream) back: print the records, "
        "or feed a config's sinks, store and API",
    )
    add_config_argument(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--kafka", metavar="SERVERS", help="Kafka bootstrap servers (host:port,...)")
    where.add_argument("--nats", metavar="URL", help="NATS server URL (nats://host:4222)")
    parser.add_argument(
        "--log",
        choices=LOG_KINDS,
        help="which section of --config to read when it has both kafka and nats",
    )
    parser.add_argument(
        "--namespace", help="topics are <namespace>_<topic> (default: the config's namespace)"
    )
    parser.add_argument(
        "--topic", action="append", default=[], help="only this topic (V, position, ...; repeat)"
    )
    parser.add_argument(
        "--from-beginning", action="store_true",
        help="start at the start of the log (default: its end; a group resumes where it was)",
    )
    parser.add_argument(
        "--group", help="read as a member of this consumer group and commit what was handled"
    )
    parser.add_argument("--count", type=int, default=None, help="exit after this many records")
    parser.add_argument(
        "--idle-exit", type=float, default=None, metavar="S",
        help="exit after S seconds without a record (a group's join counts: seconds)",
    )
    parser.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW,
        help="record ids remembered to drop repeats (0: keep repeats)",
    )
    parser.add_argument(
        "--feed", action="store_true",
        help="feed the records into the pipeline of --config (records routing, store, API) "
        "instead of printing them",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.window < 0 or (args.count is not None and args.count < 1):
        print("fleetgate consume: --window must be >= 0 and --count >= 1", file=sys.stderr)
        return EXIT_USAGE
    if args.feed:
        config = feed_config(load(args))
    else:
        config = load_config(args.config, routing=False)
        setup_logging(config.log_level, config.json_log_enable)
    namespace = config.namespace if args.namespace is None else args.namespace
    options = ReadOptions(
        from_beginning=args.from_beginning, group=args.group, topics=tuple(args.topic)
    )
    reader = build_reader(args, config, namespace, options)
    if args.feed:
        refuse_loop(config, reader.name, namespace)
    try:
        return asyncio.run(consume(args, config, reader))
    except LogUnavailableError as exc:
        print(f"fleetgate consume: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BrokenPipeError:
        # The reader of our output went away (`fleetgate consume ... | head`).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def feed_config(config: Config) -> Config:
    """``config`` without device listeners: this process is fed from the log only."""
    return config.model_copy(
        update={
            "tesla_enabled": False,
            "teltonika": config.teltonika.model_copy(update={"enabled": False}),
            "mqtt_ingest": None,
        }
    )


def refuse_loop(config: Config, log_name: str, namespace: str) -> None:
    """``--feed`` into sinks that write the very log being read would copy it for ever."""
    routed = {sink for sinks in config.records.values() for sink in sinks}
    if log_name in routed and namespace == config.namespace:
        raise ConfigError(
            f"consume --feed: records go to {log_name} with namespace {namespace!r}, the log "
            "this reads: every record would be written again; feed another namespace or "
            f"leave {log_name} out of records"
        )


def build_reader(
    args: argparse.Namespace, config: Config, namespace: str, options: ReadOptions
) -> LogReader:
    """The reader the arguments name (``--kafka``/``--nats``) or the config's section."""
    if args.kafka:
        from fleetgate.recordlog.kafka import KafkaLogReader
        from fleetgate.sinks.kafka import KafkaSettings

        section = config.sink_section("kafka")
        properties = section.properties if isinstance(section, KafkaSettings) else {}
        return KafkaLogReader(
            {**properties, "bootstrap.servers": args.kafka}, namespace, options
        )
    if args.nats:
        from fleetgate.recordlog.nats import NatsLogReader
        from fleetgate.sinks.nats import NatsSettings

        section = config.sink_section("nats")
        settings = section if isinstance(section, NatsSettings) else NatsSettings()
        return NatsLogReader(
            settings.model_copy(update={"servers": [args.nats]}), namespace, options
        )
    kind = log_kind(args.log, config)
    return open_reader(config.model_copy(update={"namespace": namespace}), kind, options)


def log_kind(chosen: LogKind | None, config: Config) -> LogKind:
    """The log to read: ``chosen``, else the one section of the config that names a log."""
    if chosen is not None:
        return chosen
    present = [kind for kind in LOG_KINDS if config.sink_section(kind) is not None]
    if len(present) == 1:
        return present[0]
    if not present:
        raise ConfigError(
            "consume: give --kafka SERVERS or --nats URL, or a --config with a kafka or nats "
            "section"
        )
    raise ConfigError("consume: the config has kafka and nats sections; choose one with --log")


async def consume(args: argparse.Namespace, config: Config, reader: LogReader) -> int:
    """Follow the log until stopped; feed the config's server, or print."""
    server: Any = None
    if args.feed:
        from fleetgate.app import Server, announce

        server = Server(config)
        await server.start()
        announce(server)
        handle = _feeder(server)
    else:
        handle = _printer()
    follower = LogFollower(reader, handle, window=args.window)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, follower.stop)
    try:
        await reader.start()
        log.info("consuming %s", reader.describe())
        await follower.run(args.count, args.idle_exit)
    finally:
        await reader.close()
        if server is not None:
            await server.stop()
    print(
        f"fleetgate consume: {follower.handled} records, {follower.duplicates} repeats dropped",
        file=sys.stderr,
    )
    return 0


def _printer() -> Any:
    out = sys.stdout.buffer

    async def handle(records: Sequence[Record]) -> None:
        out.write(b"".join([text + b"\n" for text in record_jsons(records)]))
        out.flush()

    return handle


def _feeder(server: Any) -> Any:
    """Records into the server's pipeline; returns once its ack policy says they are safe
    (so a group commits only what the pipeline holds)."""
    pipeline = server.pipeline

    async def handle(records: Sequence[Record]) -> None:
        try:
            offset = await pipeline.append(records)
        except UnspoolableRecordError as exc:
            pipeline.refuse(records, exc)  # counted and logged; never retried
            return
        requirement = pipeline.requirement_for(records)
        while not await pipeline.settled(offset, requirement):
            log.warning("consume: records not yet confirmed by the sinks; still waiting")

    return handle
