"""Sink throughput: N Teltonika-like records through a real SinkRunner into each backend.

For each sink named on the command line (default: every sink below whose server starts),
a private server is started on a free loopback port (``tests/integration/services.py``),
the records are submitted to a :class:`~fleetgate.pipeline.runner.SinkRunner` in small
submissions (like frames from trackers), and the clock stops when the last submission is
*confirmed* by the backend. The figure is confirmed records per second; afterwards the
backend's own count is checked, so a sink that drops records cannot post a good number.

Run: ``.venv/bin/python bench/sink_throughput.py [redis nats postgres zmq ...]
[--records 50000] [--batch 1000] [--submission 10]``

Adding a sink: write an ``@target("name")`` async context manager that starts the server,
yields ``(sink, count)`` (``count()`` returns how many records the backend holds) and
cleans up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.integration.services: the servers the tests use

from fleetgate.config import AckLevel  # noqa: E402
from fleetgate.pipeline import AckPolicy, Pipeline, Router  # noqa: E402
from fleetgate.pipeline.runner import RunnerSettings, SinkRunner  # noqa: E402
from fleetgate.records import Record  # noqa: E402
from fleetgate.sinks.base import Sink, SinkContext  # noqa: E402
from fleetgate.sinks.registry import sink_class  # noqa: E402
from tests.integration import services  # noqa: E402

Count = Callable[[], Awaitable[int]]
Target = Callable[[Path, SinkContext], contextlib.AbstractAsyncContextManager[tuple[Sink, Count]]]
TARGETS: dict[str, Target] = {}


def target(name: str) -> Callable[[Callable[..., AsyncIterator[tuple[Sink, Count]]]], Target]:
    def register(fn: Callable[..., AsyncIterator[tuple[Sink, Count]]]) -> Target:
        TARGETS[name] = contextlib.asynccontextmanager(fn)
        return TARGETS[name]

    return register


@contextlib.contextmanager
def running(proc: services.ManagedProcess) -> Any:
    proc.start()
    try:
        yield proc
    finally:
        proc.destroy()


@target("redis")
async def _redis(base: Path, ctx: SinkContext) -> AsyncIterator[tuple[Sink, Count]]:
    from redis.asyncio import Redis

    # Not durable: AOF fsync per write would measure the disk, not the sink.
    with running(services.redis_server(base, durable=False)) as proc:
        config = {"addrs": [proc.address], "streams": True, "stream_maxlen": 10**7}
        client = Redis(host=services.LOOPBACK, port=proc.port)

        async def count() -> int:
            return int(await client.xlen(f"{ctx.namespace}_avl"))

        yield sink_class("redis")(config, ctx), count
        await client.aclose()


@target("nats")
async def _nats(base: Path, ctx: SinkContext) -> AsyncIterator[tuple[Sink, Count]]:
    import nats

    with running(services.nats_server(base)) as proc:
        config = {"servers": [f"nats://{proc.address}"]}
        sink = sink_class("nats")(config, ctx)

        async def count() -> int:
            nc = await nats.connect(f"nats://{proc.address}")
            info = await nc.jetstream().stream_info(ctx.namespace)
            await nc.close()
            return int(info.state.messages)

        yield sink, count


@target("postgres")
async def _postgres(base: Path, ctx: SinkContext) -> AsyncIterator[tuple[Sink, Count]]:
    import psycopg

    with running(services.postgres_server(base)) as proc:
        dsn = proc.info["dsn"]
        sink = sink_class("postgres")({"dsn": dsn, "table": "bench_records"}, ctx)

        async def count() -> int:
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                row = await (await conn.execute("SELECT count(*) FROM bench_records")).fetchone()
                return int(row[0]) if row else 0

        yield sink, count


@target("zmq")
async def _zmq(base: Path, ctx: SinkContext) -> AsyncIterator[tuple[Sink, Count]]:
    import zmq

    addr = f"tcp://{services.LOOPBACK}:{services.free_port()}"
    sink = sink_class("zmq")({"addr": addr}, ctx)
    await sink.start()
    # A real subscriber in a thread; PUB with nobody listening would just drop everything.
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(addr)
    received = {"avl": 0, "probe": 0}
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            if sub.poll(100):
                topic, _ = sub.recv_multipart()
                received["probe" if topic.endswith(b"_probe") else "avl"] += 1

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    probe = Record("bench", "probe", "probe", 0, 0, {})
    while not received["probe"]:  # slow joiner: wait until the subscription is in place
        await sink.publish([probe])
        await asyncio.sleep(0.01)

    async def count() -> int:
        for _ in range(500):  # delivery trails confirmation on PUB/SUB
            await asyncio.sleep(0.01)
        return received["avl"]

    yield sink, count
    stop.set()
    thread.join()
    sub.close(linger=0)
    zctx.term()


@contextlib.contextmanager
def env(**values: str) -> Any:
    """Set environment variables for the duration (the clients read them when created)."""
    import os

    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@target("kafka")
async def _kafka(base: Path, ctx: SinkContext) -> AsyncIterator[tuple[Sink, Count]]:
    from tests.integration.sinks.test_kafka import read_topics

    with running(services.tansu_server(base)) as proc:
        sink = sink_class("kafka")({"bootstrap.servers": proc.address}, ctx)

        async def count() -> int:
            topic = f"{ctx.namespace}_avl"
            return len(await asyncio.to_thread(read_topics, proc.address, [topic], 1, 5))

        yield sink, count


@target("kinesis")
async def _kinesis(base: Path, ctx: SinkContext) -> AsyncIterator[tuple[Sink, Count]]:
    from tests.integration.sinks.test_kinesis import kinesis_client, read_stream

    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    with running(services.moto_server(base)) as proc, env(**aws):
        endpoint = proc.info["endpoint"]
        stream = f"{ctx.namespace}_avl"
        client = kinesis_client(endpoint)
        client.create_stream(StreamName=stream, ShardCount=4)
        sink = sink_class("kinesis")({"override_host": endpoint}, ctx)

        async def count() -> int:
            return len(await asyncio.to_thread(read_stream, client, stream))

        yield sink, count


@target("pubsub")
async def _pubsub(base: Path, ctx: SinkContext) -> AsyncIterator[tuple[Sink, Count]]:
    from google.cloud import pubsub_v1

    with (
        running(services.pubsub_emulator(base)) as proc,
        env(PUBSUB_EMULATOR_HOST=proc.info["host"]),
    ):
        project = "bench"
        topic = f"projects/{project}/topics/{ctx.namespace}_avl"
        subscription = f"projects/{project}/subscriptions/{ctx.namespace}_avl"
        subscriber = pubsub_v1.SubscriberClient()
        pubsub_v1.PublisherClient().create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        sink = sink_class("pubsub")({"gcp_project_id": project}, ctx)

        def pull_all() -> int:
            total = 0
            while received := subscriber.pull(
                subscription=subscription, max_messages=1000, timeout=10
            ).received_messages:
                total += len(received)
                subscriber.acknowledge(
                    subscription=subscription, ack_ids=[m.ack_id for m in received]
                )
            return total

        async def count() -> int:
            return await asyncio.to_thread(pull_all)

        yield sink, count
        subscriber.close()


@target("mqtt")
async def _mqtt(base: Path, ctx: SinkContext) -> AsyncIterator[tuple[Sink, Count]]:
    import subprocess

    # QoS 1 to mosquitto; an out-of-process mosquitto_sub counts what the broker delivered.
    with running(services.mosquitto_server(base)) as proc:
        topic_base = ctx.namespace
        out = base / f"{topic_base}.sub"
        argv = ["mosquitto_sub", "-h", services.LOOPBACK, "-p", str(proc.port)]
        argv += ["-t", f"{topic_base}/#", "-q", "1", "-N", "-F", "x"]  # one byte a message
        with out.open("wb") as sink_file:
            sub = subprocess.Popen(argv, stdout=sink_file)  # noqa: ASYNC220 - starts at once
        config = {"broker": proc.address, "topic_base": topic_base, "qos": 1}
        sink = sink_class("mqtt")(config, ctx)
        probe = Record("bench", "probe", "probe", 0, 0, {})
        await sink.start()
        while not out.stat().st_size:  # wait until the subscription is in place
            await sink.publish([probe])
            await asyncio.sleep(0.05)
        probes = out.stat().st_size

        async def count() -> int:
            last = -1
            while (size := out.stat().st_size) != last:  # until delivery stops growing
                last = size
                await asyncio.sleep(0.5)
            return last - probes

        yield sink, count
        sub.terminate()
        sub.wait(10)


def teltonika_records(count: int, devices: int = 100) -> list[Record]:
    base_ms = 1_717_171_717_000
    return [
        Record(
            source="teltonika",
            device_id=f"3563070424{i % devices:05d}",
            topic="avl",
            created_at=base_ms + i * 1000,
            received_at=base_ms + i * 1000 + 120,
            data={
                "priority": 0,
                "gps": {"lat": 54.6872 + i * 1e-6, "lon": 25.2797, "alt": 112, "speed": i % 120},
                "io": {"239": 1, "240": 1, "66": 12_876, "16": 1_234_567 + i, "21": 4},
            },
        )
        for i in range(count)
    ]


async def run_one(name: str, args: argparse.Namespace, base: Path) -> str:
    ctx = SinkContext(namespace=f"bench{services.free_port()}")
    records = teltonika_records(args.records)
    settings = RunnerSettings(max_queue_records=args.records + 1, max_batch=args.batch)
    async with TARGETS[name](base, ctx) as (sink, count):
        runner = SinkRunner(sink, settings)
        pipeline = Pipeline(
            {runner.name: runner},
            Router({}, always=[runner.name]),
            AckPolicy(AckLevel.STORE, runner.name),
            ack_timeout_s=3600,
        )
        await runner.start()
        step = args.submission
        started = time.perf_counter()
        last = 0
        for i in range(0, len(records), step):
            last = await pipeline.append(records[i : i + step])
        if not await pipeline.settled(last, pipeline.requirement(records[0].topic)):
            raise SystemExit(f"{name}: records refused")
        elapsed = time.perf_counter() - started
        await runner.close()
        stored = await count()
    rate = len(records) / elapsed
    check = "ok" if stored >= len(records) else f"ONLY {stored} STORED"
    return (
        f"{name:<9} {len(records):>7} records in {elapsed:6.2f} s = {rate:>9,.0f} records/s "
        f"(batch {args.batch}, submissions of {step}; backend count {stored}: {check})"
    )


async def main(args: argparse.Namespace) -> int:
    names = args.sinks or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown sinks: {', '.join(unknown)}; known: {', '.join(TARGETS)}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="fleetgate-sink-bench-"))
    try:
        for name in names:
            try:
                print(await run_one(name, args, base), flush=True)
            except services.ServiceUnavailableError as exc:
                print(f"{name:<9} skipped: {str(exc).splitlines()[0]}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sinks", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000, help="runner max_batch")
    parser.add_argument("--submission", type=int, default=10, help="records per submit()")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop

        sys.exit(uvloop.run(main(arguments)))
    except ImportError:
        sys.exit(asyncio.run(main(arguments)))
