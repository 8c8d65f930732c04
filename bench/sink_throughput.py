"""Sink throughput: each sink against a bare client of its library, same server, same run.

For each sink named on the command line (default: every sink below whose server starts),
a private server is started on a free loopback port (``tests/integration/services.py``).
Then, ``--repeat`` times, two runs go to that server, each into its own namespace:

* **fleetgate**: N Teltonika-like records are submitted to a real
  :class:`~fleetgate.pipeline.runner.SinkRunner` in small submissions (like frames from
  trackers); the clock stops when the last submission is *confirmed* by the backend. The
  sink serialises the records itself (inside the timing), as it does in production;
  ``--serialized`` makes their JSON beforehand instead, as the bare client's payloads are;
  ``--spooled`` makes only their ``data`` JSON beforehand, as the spool's encoding (on by
  default, in ``Pipeline.append``) leaves records in production before any sink sees them.
  The bench runs without a spool, so by default the sink also pays for that.
* **bare**: the same records sent with the sink's library alone, used the way a competent
  engineer would for the same job and delivery guarantee (every message confirmed by the
  backend), with no fleetgate code inside the timing. The payload bytes, keys, headers and
  destinations are produced once beforehand by the sink's own functions, so both runs send
  the same bytes.

Afterwards the backend's own count is checked for both runs, so a path that drops records
cannot post a good number. Every backend runs outside this process (zmq's counting SUB
socket too), so what is timed here competes with no receiver for the GIL. The table gives records/s (median, min-max), the ratio
fleetgate/bare of each pair (median, min-max) and this process's CPU per record (all its
threads, not the server's); the two runs of a pair alternate in order. ``mqtt_paho`` runs
the mqtt sink against paho-mqtt itself, the client under aiomqtt.

Run: ``.venv/bin/python bench/sink_throughput.py [redis nats postgres zmq ...]
[--records 50000] [--batch 1000] [--submission 10] [--repeat 2] [--serialized | --spooled] [--no-bare]``

``--measure`` counts instructions instead (``valgrind --tool=callgrind``, which wall-clock
noise does not move): each side runs once in a fresh process under callgrind at two record
counts (``--measure-sizes``), once with its timed part and once without it (the same setup:
records, payloads, connections); the two differences, divided by the extra records, give
the instructions per record of the timed part alone, e.g.
``bench/sink_throughput.py zmq --spooled --measure``. Every thread of the process is
counted (libzmq's I/O thread too), not the server's; the backend's count is not checked.

Adding a sink: write an ``@target("name")`` async context manager that starts the server
and yields a :class:`Backend`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.integration.services: the servers the tests use

from fleetgate.config import AckLevel  # noqa: E402
from fleetgate.forms import wire_payload  # noqa: E402
from fleetgate.pipeline import AckPolicy, Pipeline, Router  # noqa: E402
from fleetgate.pipeline.runner import RunnerSettings, SinkRunner  # noqa: E402
from fleetgate.records import Record, data_json, set_offset  # noqa: E402
from fleetgate.sinks.base import Sink, SinkContext  # noqa: E402
from fleetgate.sinks.registry import sink_class  # noqa: E402
from tests.integration import services  # noqa: E402

Send = Callable[[], Awaitable[None]]
# A bare client for one namespace: connects and prepares outside the timing, yields the
# timed send (which returns once the backend confirmed every message).
Bare = Callable[[SinkContext, list[Record]], contextlib.AbstractAsyncContextManager[Send]]


@dataclass
class Backend:
    """One running server: how to make the sink, count what it holds, and the bare client."""

    # An async factory: some sinks need a subscriber in place before they publish.
    sink: Callable[[SinkContext], Awaitable[Sink]]
    count: Callable[[SinkContext], Awaitable[int]]
    bare: Bare | None = None
    cleanups: list[Callable[[], Any]] = field(default_factory=list)


Target = Callable[[Path], contextlib.AbstractAsyncContextManager[Backend]]
TARGETS: dict[str, Target] = {}


def target(name: str) -> Callable[[Callable[..., AsyncIterator[Backend]]], Target]:
    def register(fn: Callable[..., AsyncIterator[Backend]]) -> Target:
        TARGETS[name] = contextlib.asynccontextmanager(fn)
        return TARGETS[name]

    return register


def bare(fn: Callable[..., AsyncIterator[Send]]) -> Bare:
    return contextlib.asynccontextmanager(fn)


@contextlib.contextmanager
def running(proc: services.ManagedProcess) -> Iterator[services.ManagedProcess]:
    proc.start()
    try:
        yield proc
    finally:
        proc.destroy()


def numbered(records: list[Record]) -> list[Record]:
    """Give records the offsets the pipeline would (the ``record_id`` header needs one)."""
    for offset, record in enumerate(records, 1):
        set_offset(record, offset)
    return records


# -- redis ---------------------------------------------------------------------------------
@target("redis")
async def _redis(base: Path) -> AsyncIterator[Backend]:
    from redis.asyncio import Redis

    # Not durable: AOF fsync per write would measure the disk, not the sink.
    with running(services.redis_server(base, durable=False)) as proc:
        config = {"addrs": [proc.address], "streams": True, "stream_maxlen": 10**7}
        client = Redis(host=services.LOOPBACK, port=proc.port)

        async def make(ctx: SinkContext) -> Sink:
            return sink_class("redis")(config, ctx)

        async def count(ctx: SinkContext) -> int:
            return int(await client.xlen(f"{ctx.namespace}_avl"))

        @bare
        async def send_bare(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
            # redis-py's pipeline, one per batch: XADD with the fields the sink writes.
            shaper = sink_class("redis")(config, ctx)
            entries = [
                (
                    shaper.destination(r.topic),
                    {"payload": wire_payload(r), **shaper.headers(r), "key": r.device_id},
                )
                for r in numbered(records)
            ]
            own = Redis(host=services.LOOPBACK, port=proc.port)
            await own.ping()
            step = ARGS.batch

            async def send() -> None:
                for i in range(0, len(entries), step):
                    pipe = own.pipeline(transaction=False)
                    for stream, fields in entries[i : i + step]:
                        pipe.xadd(stream, fields, maxlen=10**7, approximate=True)  # type: ignore[arg-type]
                    await pipe.execute()

            yield send
            await own.aclose()

        yield Backend(make, count, send_bare)
        await client.aclose()


# -- nats ----------------------------------------------------------------------------------
@target("nats")
async def _nats(base: Path) -> AsyncIterator[Backend]:
    import nats

    with running(services.nats_server(base)) as proc:
        config = {"servers": [f"nats://{proc.address}"]}

        async def make(ctx: SinkContext) -> Sink:
            return sink_class("nats")(config, ctx)

        async def count(ctx: SinkContext) -> int:
            nc = await nats.connect(f"nats://{proc.address}")
            info = await nc.jetstream().stream_info(ctx.namespace)
            await nc.close()
            return int(info.state.messages)

        @bare
        async def send_bare(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
            # JetStream publish_async (acks pipelined on one connection), then every ack.
            from fleetgate.sinks.nats import message_id

            shaper: Any = sink_class("nats")(config, ctx)
            messages = []
            for r in numbered(records):
                payload = wire_payload(r)
                headers = shaper.headers(r)
                headers["Nats-Msg-Id"] = headers.get("record_id") or message_id(r, payload)
                messages.append((shaper.subject(r), payload, headers))
            nc = await nats.connect(f"nats://{proc.address}")
            js = nc.jetstream(publish_async_max_pending=ARGS.batch)
            await js.add_stream(name=shaper.stream, subjects=[f"{shaper.prefix}.>"])

            async def send() -> None:
                acks = [await js.publish_async(s, p, headers=h) for s, p, h in messages]
                await asyncio.gather(*acks)

            yield send
            await nc.close()

        yield Backend(make, count, send_bare)


# -- postgres ------------------------------------------------------------------------------
@target("postgres")
async def _postgres(base: Path) -> AsyncIterator[Backend]:
    import psycopg
    from psycopg import sql

    from fleetgate.sinks.postgres import _COLUMNS, row

    with running(services.postgres_server(base)) as proc:
        dsn = proc.info["dsn"]

        def config(ctx: SinkContext) -> dict[str, Any]:
            return {"dsn": dsn, "table": f"{ctx.namespace}_records"}

        async def make(ctx: SinkContext) -> Sink:
            return sink_class("postgres")(config(ctx), ctx)

        async def count(ctx: SinkContext) -> int:
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                query = sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(f"{ctx.namespace}_records")
                )
                found = await (await conn.execute(query)).fetchone()
                return int(found[0]) if found else 0

        @bare
        async def send_bare(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
            # psycopg COPY FROM STDIN, one transaction per batch, into the sink's table.
            creator = sink_class("postgres")(config(ctx), ctx)
            await creator.start()  # the same table and index, created outside the timing
            await creator.close()
            rows = [row(r) for r in records]
            copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(f"{ctx.namespace}_records"),
                sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
            )
            conn = await psycopg.AsyncConnection.connect(dsn)
            step = ARGS.batch

            async def send() -> None:
                for i in range(0, len(rows), step):
                    async with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
                        for values in rows[i : i + step]:
                            await cp.write_row(values)

            yield send
            await conn.close()

        yield Backend(make, count, send_bare)


# -- zmq -----------------------------------------------------------------------------------
# A SUB socket in its own process (like every other target's server): counting 50,000
# messages costs a Python receiver as much CPU as sending them, and in the bench's process
# its thread competed with the timed sender for the GIL (a GIL hand-off per message).
_ZMQ_COUNTER = """
import sys, threading, zmq
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 0)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
received = {}
def receive():
    while True:
        topic, _ = sub.recv_multipart()
        received[topic] = received.get(topic, 0) + 1
threading.Thread(target=receive, daemon=True).start()
for line in sys.stdin:
    print(received.get(line.strip().encode(), 0), flush=True)
"""


class ZmqSubscriber:
    """A real SUB socket in a child process counting messages per topic frame."""

    def __init__(self, addr: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _ZMQ_COUNTER, addr],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def received(self, topic: bytes) -> int:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write(topic.decode() + "\n")
        self._proc.stdin.flush()
        return int(self._proc.stdout.readline())

    async def joined(self, probe: Callable[[], Awaitable[None]], topic: bytes) -> None:
        while not self.received(topic):  # slow joiner: wait for the subscription
            await probe()
            await asyncio.sleep(0.01)

    async def settled(self, topic: bytes) -> int:
        """The count once it stops growing (delivery trails confirmation on PUB/SUB)."""
        last = -1
        while (count := self.received(topic)) != last:
            last = count
            await asyncio.sleep(1.0)
        return count

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


@target("zmq")
async def _zmq(base: Path) -> AsyncIterator[Backend]:
    import zmq

    subscribers: dict[str, ZmqSubscriber] = {}

    async def make(ctx: SinkContext) -> Sink:
        addr = f"tcp://{services.LOOPBACK}:{services.free_port()}"
        sink = sink_class("zmq")({"addr": addr}, ctx)
        await sink.start()  # bind before the subscriber connects
        sub = subscribers[ctx.namespace] = ZmqSubscriber(addr)
        probe = Record("bench", "probe", "probe", 0, 0, {})
        await sub.joined(lambda: sink.publish([probe]), f"{ctx.namespace}_probe".encode())
        return sink

    async def count(ctx: SinkContext) -> int:
        return await subscribers[ctx.namespace].settled(f"{ctx.namespace}_avl".encode())

    @bare
    async def send_bare(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
        # A PUB socket (the sink's high-water mark), two-frame messages, send in a loop.
        shaper = sink_class("zmq")({"addr": "tcp://127.0.0.1:1"}, ctx)
        messages = [[shaper.destination(r.topic).encode(), wire_payload(r)] for r in records]
        zctx = zmq.Context()
        pub = zctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 100_000)
        addr = f"tcp://{services.LOOPBACK}:{services.free_port()}"
        pub.bind(addr)
        sub = subscribers[ctx.namespace] = ZmqSubscriber(addr)
        probe_topic = f"{ctx.namespace}_probe".encode()

        async def probe() -> None:
            pub.send_multipart([probe_topic, b"{}"])

        await sub.joined(probe, probe_topic)

        async def send() -> None:
            # As the sink sends them (two sends, int flags, the compiled Socket.send that
            # pyzmq's Python Socket.send wraps): pyzmq's cheapest path, so the ratio compares
            # the sink's work, not a cheaper call than the baseline's. (pub.send, the public
            # wrapper, costs ~3.7k more instructions a message, a third of the bare loop.)
            compiled = zmq.backend.Socket
            send = compiled.send.__get__(pub) if isinstance(pub, compiled) else pub.send
            more, last = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)
            for topic, payload in messages:
                send(topic, more)
                send(payload, last)

        yield send
        pub.close(linger=1000)
        zctx.term()

    try:
        yield Backend(make, count, send_bare)
    finally:
        for sub in subscribers.values():
            sub.close()


# -- kafka ---------------------------------------------------------------------------------
@target("kafka")
async def _kafka(base: Path) -> AsyncIterator[Backend]:
    from tests.integration.sinks.test_kafka import read_topics

    with running(services.tansu_server(base)) as proc:
        config = {"bootstrap.servers": proc.address}

        async def make(ctx: SinkContext) -> Sink:
            return sink_class("kafka")(config, ctx)

        async def count(ctx: SinkContext) -> int:
            topic = f"{ctx.namespace}_avl"
            return len(await asyncio.to_thread(read_topics, proc.address, [topic], 1, 5))

        @bare
        async def send_bare(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
            # confluent-kafka Producer: produce with a delivery report per message, poll(0)
            # as it goes (serves reports, frees the queue), flush() at the end.
            from confluent_kafka import Producer

            shaper = sink_class("kafka")(config, ctx)
            messages = [
                (
                    shaper.destination(r.topic),
                    wire_payload(r),
                    r.device_id.encode(),
                    list(shaper.headers(r).items()),
                )
                for r in numbered(records)
            ]
            producer = Producer(dict(config))
            producer.list_topics(timeout=10)  # connected before the clock starts
            outcome = {"ok": 0, "failed": 0}

            def report(err: Any, _msg: Any) -> None:
                outcome["failed" if err is not None else "ok"] += 1

            async def send() -> None:
                produce, poll = producer.produce, producer.poll
                for topic, value, key, headers in messages:
                    while True:
                        try:
                            produce(topic, value, key, headers=headers, on_delivery=report)
                            break
                        except BufferError:
                            poll(0.05)
                    poll(0)
                producer.flush(60)
                if outcome["ok"] != len(messages):
                    raise SystemExit(f"kafka bare: {outcome} of {len(messages)} delivered")

            yield send

        yield Backend(make, count, send_bare)


# -- kinesis -------------------------------------------------------------------------------
@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
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


@target("kinesis")
async def _kinesis(base: Path) -> AsyncIterator[Backend]:
    from tests.integration.sinks.test_kinesis import kinesis_client, read_stream

    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    with running(services.moto_server(base)) as proc, env(**aws):
        endpoint = proc.info["endpoint"]
        client = kinesis_client(endpoint)

        async def make(ctx: SinkContext) -> Sink:
            client.create_stream(StreamName=f"{ctx.namespace}_avl", ShardCount=4)
            return sink_class("kinesis")({"override_host": endpoint}, ctx)

        async def count(ctx: SinkContext) -> int:
            return len(await asyncio.to_thread(read_stream, client, f"{ctx.namespace}_avl"))

        @bare
        async def send_bare(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
            # boto3 PutRecords, 500 entries a call, failed entries sent again.
            stream = f"{ctx.namespace}_avl"
            client.create_stream(StreamName=stream, ShardCount=4)
            entries = [{"Data": wire_payload(r), "PartitionKey": r.device_id} for r in records]
            own = kinesis_client(endpoint)

            def put_all() -> None:
                for i in range(0, len(entries), 500):
                    pending = entries[i : i + 500]
                    while pending:
                        reply = own.put_records(StreamName=stream, Records=pending)
                        results = zip(pending, reply["Records"], strict=True)
                        pending = [entry for entry, r in results if r.get("ErrorCode")]

            async def send() -> None:
                await asyncio.to_thread(put_all)

            yield send

        yield Backend(make, count, send_bare)


# -- pubsub --------------------------------------------------------------------------------
@target("pubsub")
async def _pubsub(base: Path) -> AsyncIterator[Backend]:
    from google.cloud import pubsub_v1

    with (
        running(services.pubsub_emulator(base)) as proc,
        env(PUBSUB_EMULATOR_HOST=proc.info["host"]),
    ):
        project = "bench"
        subscriber = pubsub_v1.SubscriberClient()
        admin = pubsub_v1.PublisherClient()

        def create(ctx: SinkContext) -> str:
            topic = f"projects/{project}/topics/{ctx.namespace}_avl"
            subscription = f"projects/{project}/subscriptions/{ctx.namespace}_avl"
            admin.create_topic(name=topic)
            subscriber.create_subscription(name=subscription, topic=topic)
            return topic

        async def make(ctx: SinkContext) -> Sink:
            create(ctx)
            return sink_class("pubsub")({"gcp_project_id": project}, ctx)

        def pull_all(subscription: str) -> int:
            total = 0
            while received := subscriber.pull(
                subscription=subscription, max_messages=1000, timeout=10
            ).received_messages:
                total += len(received)
                subscriber.acknowledge(
                    subscription=subscription, ack_ids=[m.ack_id for m in received]
                )
            return total

        async def count(ctx: SinkContext) -> int:
            subscription = f"projects/{project}/subscriptions/{ctx.namespace}_avl"
            return await asyncio.to_thread(pull_all, subscription)

        @bare
        async def send_bare(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
            # PublisherClient.publish (the library batches), then every future's result.
            topic = create(ctx)
            shaper = sink_class("pubsub")({"gcp_project_id": project}, ctx)
            messages = [(wire_payload(r), shaper.headers(r)) for r in numbered(records)]
            settings = pubsub_v1.types.BatchSettings(max_messages=1000, max_latency=0.01)
            publisher = pubsub_v1.PublisherClient(batch_settings=settings)

            def publish_all() -> None:
                futures = [publisher.publish(topic, data, **attrs) for data, attrs in messages]
                for future in futures:
                    future.result(timeout=60)

            async def send() -> None:
                await asyncio.to_thread(publish_all)

            yield send
            publisher.stop()

        yield Backend(make, count, send_bare)
        subscriber.close()


# -- mqtt ----------------------------------------------------------------------------------
@target("mqtt")
async def _mqtt(base: Path) -> AsyncIterator[Backend]:
    async with _mqtt_backend(base, paho=False) as backend:
        yield backend


@target("mqtt_paho")
async def _mqtt_paho(base: Path) -> AsyncIterator[Backend]:
    # The same sink against paho-mqtt itself, the client under aiomqtt, driven by its
    # own network thread: what the protocol costs without an asyncio wrapper.
    async with _mqtt_backend(base, paho=True) as backend:
        yield backend


@contextlib.asynccontextmanager
async def _mqtt_backend(base: Path, paho: bool) -> AsyncIterator[Backend]:
    import aiomqtt

    # QoS 1 to mosquitto; an out-of-process mosquitto_sub per namespace counts what the
    # broker delivered (one byte a message).
    with running(services.mosquitto_server(base)) as proc:
        subs: dict[str, tuple[subprocess.Popen[bytes], Path, int]] = {}

        async def subscribe(ctx: SinkContext, probe: Callable[[], Awaitable[None]]) -> None:
            out = base / f"{ctx.namespace}.sub"
            argv = ["mosquitto_sub", "-h", services.LOOPBACK, "-p", str(proc.port)]
            argv += ["-t", f"{ctx.namespace}/#", "-q", "1", "-N", "-F", "x"]
            with out.open("wb") as sink_file:
                sub = subprocess.Popen(argv, stdout=sink_file)  # noqa: ASYNC220 - starts at once
            while not out.stat().st_size:  # wait until the subscription is in place
                await probe()
                await asyncio.sleep(0.05)
            subs[ctx.namespace] = (sub, out, out.stat().st_size)

        async def make(ctx: SinkContext) -> Sink:
            config = {"broker": proc.address, "topic_base": ctx.namespace, "qos": 1}
            sink = sink_class("mqtt")(config, ctx)
            await sink.start()
            probe = Record("bench", "probe", "probe", 0, 0, {})
            await subscribe(ctx, lambda: sink.publish([probe]))
            return sink

        async def count(ctx: SinkContext) -> int:
            _, out, probes = subs[ctx.namespace]
            last = -1
            while (size := out.stat().st_size) != last:  # until delivery stops growing
                last = size
                await asyncio.sleep(0.5)
            return last - probes

        @bare
        async def send_bare(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
            # aiomqtt (the sink's library), QoS 1: publishes run concurrently per batch and
            # each returns on its PUBACK.
            shaper: Any = sink_class("mqtt")(
                {"broker": proc.address, "topic_base": ctx.namespace}, ctx
            )
            messages = [m for r in records for m in shaper.messages(r)]
            quiet = logging.getLogger("bench.mqtt")  # aiomqtt warns per pending publish
            quiet.setLevel(logging.ERROR)
            client = aiomqtt.Client(
                services.LOOPBACK, proc.port, max_inflight_messages=ARGS.batch, logger=quiet
            )
            await client.__aenter__()

            async def probe() -> None:
                await client.publish(f"{ctx.namespace}/probe", b"{}", qos=1)

            await subscribe(ctx, probe)
            step = ARGS.batch

            async def send() -> None:
                for i in range(0, len(messages), step):
                    await asyncio.gather(
                        *(client.publish(t, p, qos=1) for t, p in messages[i : i + step])
                    )

            yield send
            await client.__aexit__(None, None, None)

        @bare
        async def send_bare_paho(ctx: SinkContext, records: list[Record]) -> AsyncIterator[Send]:
            # paho-mqtt with loop_start(): publish() queues, its thread sends and reads the
            # PUBACKs; on_publish counts them; 200 in flight, like the sink's session.
            import paho.mqtt.client as paho_mqtt

            shaper: Any = sink_class("mqtt")(
                {"broker": proc.address, "topic_base": ctx.namespace}, ctx
            )
            messages = [m for r in records for m in shaper.messages(r)]
            client = paho_mqtt.Client(paho_mqtt.CallbackAPIVersion.VERSION2)
            client.max_inflight_messages_set(200)
            client.max_queued_messages_set(0)
            acked = {"ok": 0, "failed": 0}
            target_count = {"n": 1}
            done = threading.Event()

            def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
                acked["failed" if reason.is_failure else "ok"] += 1
                if acked["ok"] + acked["failed"] >= target_count["n"]:
                    done.set()

            client.on_publish = on_publish
            client.connect(services.LOOPBACK, proc.port)
            client.loop_start()

            async def probe() -> None:
                client.publish(f"{ctx.namespace}/probe", b"{}", qos=1)

            await subscribe(ctx, probe)

            def publish_all() -> None:
                acked.update(ok=0, failed=0)
                target_count["n"] = len(messages)
                done.clear()
                for topic, payload in messages:
                    client.publish(topic, payload, qos=1)
                if not done.wait(120) or acked["failed"]:
                    raise SystemExit(f"mqtt paho bare: {acked} of {len(messages)}")

            async def send() -> None:
                await asyncio.to_thread(publish_all)

            yield send
            client.loop_stop()
            client.disconnect()

        try:
            yield Backend(make, count, send_bare_paho if paho else send_bare)
        finally:
            for sub, _, _ in subs.values():
                sub.terminate()
                sub.wait(10)


# -- the runs ------------------------------------------------------------------------------
def teltonika_records(count: int, frame: int = 1, devices: int = 100) -> list[Record]:
    """``frame`` consecutive records share a device (and its id object), as a tracker's
    frame does: each submission of the fleetgate run is then one device's frame."""
    base_ms = 1_717_171_717_000
    ids = [f"3563070424{i % devices:05d}" for i in range(devices)]
    return [
        Record(
            source="teltonika",
            device_id=ids[(i // frame) % devices],
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


@dataclass
class Run:
    rate: float
    # CPU of this process (every thread: the clients' own too, not the server's) per record
    cpu_us: float
    stored: int
    expected: int

    @property
    def check(self) -> str:
        return "ok" if self.stored >= self.expected else f"ONLY {self.stored} STORED"


def new_context() -> SinkContext:
    return SinkContext(namespace=f"bench{services.free_port()}")


async def run_fleetgate(backend: Backend, args: argparse.Namespace, timed: bool = True) -> Run:
    """``timed`` False: the same setup and teardown without the submissions (--measure)."""
    ctx = new_context()
    records = teltonika_records(args.records, args.submission)
    if args.serialized:
        for record in records:  # the JSON form cached on the record, outside the timing
            wire_payload(record)
    elif args.spooled:
        for record in records:  # what the spool's encode_payload caches, outside the timing
            data_json(record)
    settings = RunnerSettings(max_queue_records=args.records + 1, max_batch=args.batch)
    sink = await backend.sink(ctx)
    runner = SinkRunner(sink, settings)
    pipeline = Pipeline(
        {runner.name: runner},
        Router({}, always=[runner.name]),
        AckPolicy(AckLevel.STORE, runner.name),
        ack_timeout_s=3600,
    )
    await runner.start()
    step = args.submission
    started, cpu = time.perf_counter(), time.process_time()
    last = 0
    for i in range(0, len(records) if timed else 0, step):
        last = await pipeline.append(records[i : i + step])
    if timed and not await pipeline.settled(last, pipeline.requirement(records[0].topic)):
        raise SystemExit(f"{sink.name}: records refused")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await runner.close()
    n = len(records)
    if args.stage:
        return Run(n / max(elapsed, 1e-9), cpu / n * 1e6, n, n)  # under callgrind
    return Run(n / elapsed, cpu / n * 1e6, await backend.count(ctx), n)


async def run_bare(backend: Backend, args: argparse.Namespace, timed: bool = True) -> Run:
    """``timed`` False: the same setup and teardown without the send (--measure)."""
    assert backend.bare is not None
    ctx = new_context()
    records = teltonika_records(args.records, args.submission)
    async with backend.bare(ctx, records) as send:
        started, cpu = time.perf_counter(), time.process_time()
        if timed:
            await send()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    n = len(records)
    if args.stage:
        return Run(n / max(elapsed, 1e-9), cpu / n * 1e6, n, n)  # under callgrind
    return Run(n / elapsed, cpu / n * 1e6, await backend.count(ctx), n)


def spread(values: list[float], form: str) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return format(middle, form)
    return f"{middle:{form}} ({min(values):{form}}-{max(values):{form}})"


async def run_one(name: str, args: argparse.Namespace, base: Path) -> str:
    fleet: list[Run] = []
    bare_runs: list[Run] = []
    async with TARGETS[name](base) as backend:
        with_bare = backend.bare is not None and not args.no_bare
        for i in range(args.repeat):
            order = [run_fleetgate, run_bare] if i % 2 else [run_bare, run_fleetgate]
            for run in order:
                if run is run_bare and not with_bare:
                    continue
                result = await run(backend, args)
                (bare_runs if run is run_bare else fleet).append(result)
                label = "bare" if run is run_bare else "fleetgate"
                print(
                    f"  {name} {label:<9} {result.rate:>9,.0f} records/s,"
                    f" {result.cpu_us:5.1f} us CPU/record (backend count {result.stored}: {result.check})",
                    flush=True,
                )
    fleet_text = spread([r.rate for r in fleet], ",.0f")
    checks = {r.check for r in fleet + bare_runs}
    check = "ok" if checks == {"ok"} else "; ".join(sorted(checks - {"ok"}))
    fleet_cpu = spread([r.cpu_us for r in fleet], ".1f")
    if not bare_runs:
        return f"| {name} | - | {fleet_text} | - | - / {fleet_cpu} | {check} |"
    ratios = [f.rate / b.rate for f, b in zip(fleet, bare_runs, strict=True)]
    bare_text = spread([r.rate for r in bare_runs], ",.0f")
    bare_cpu = spread([r.cpu_us for r in bare_runs], ".1f")
    return (
        f"| {name} | {bare_text} | {fleet_text} | **{spread(ratios, '.2f')}** "
        f"| {bare_cpu} / {fleet_cpu} | {check} |"
    )


# --measure: (side, with its timed part) for each stage a child process runs under callgrind
STAGES = {
    "fleetgate": (run_fleetgate, True),
    "fleetgate-setup": (run_fleetgate, False),
    "bare": (run_bare, True),
    "bare-setup": (run_bare, False),
}


async def run_stage(name: str, args: argparse.Namespace) -> int:
    """One stage of ``--measure`` (this process runs under callgrind)."""
    base = Path(tempfile.mkdtemp(prefix="fleetgate-sink-bench-"))
    try:
        async with TARGETS[name](base) as backend:
            run, timed = STAGES[args.stage]
            await run(backend, args, timed)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def callgrind_instructions(name: str, args: argparse.Namespace, stage: str, records: int) -> int:
    """Instructions callgrind counts for one stage run of ``records`` records."""
    argv = [sys.executable, str(Path(__file__).resolve()), name, "--stage", stage,
            "--records", str(records), "--batch", str(args.batch),
            "--submission", str(args.submission)]
    if args.spooled:
        argv.append("--spooled")
    if args.serialized:
        argv.append("--serialized")
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        capture_output=True, text=True, check=False,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or not match:
        raise SystemExit(f"{name} {stage}: callgrind run failed:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def measure(args: argparse.Namespace) -> int:
    """``--measure``: callgrind instructions per record of each side's timed part."""
    names = args.sinks or ["zmq"]
    small, large = args.measure_sizes
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    for name in names:
        per_record: dict[str, float] = {}
        for side in ("fleetgate", "bare"):
            if side == "bare" and args.no_bare:
                continue
            counts = {
                stage: [callgrind_instructions(name, args, stage, n) for n in (small, large)]
                for stage in (side, f"{side}-setup")
            }
            timed = counts[side][1] - counts[side][0]
            setup = counts[f"{side}-setup"][1] - counts[f"{side}-setup"][0]
            per_record[side] = (timed - setup) / (large - small)
            print(f"  {name} {side:<9} {per_record[side]:>9,.0f} instructions per record "
                  f"(setup {setup / (large - small):,.0f} per record, excluded)", flush=True)
        if "bare" in per_record:
            ratio = per_record["bare"] / per_record["fleetgate"]
            print(f"| {name} | {per_record['bare']:,.0f} | {per_record['fleetgate']:,.0f} "
                  f"| **{ratio:.2f}** |", flush=True)
    return 0


async def main(args: argparse.Namespace) -> int:
    if args.stage:
        return await run_stage(args.sinks[0], args)
    names = args.sinks or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown sinks: {', '.join(unknown)}; known: {', '.join(TARGETS)}")
        return 2
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    base = Path(tempfile.mkdtemp(prefix="fleetgate-sink-bench-"))
    rows: list[str] = []
    try:
        for name in names:
            try:
                rows.append(await run_one(name, args, base))
            except services.ServiceUnavailableError as exc:
                rows.append(f"| {name} | skipped: {str(exc).splitlines()[0]} | | | | |")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{args.records} records, runner batch {args.batch}, submissions of "
        f"{args.submission}, {args.repeat} pair(s); median (min-max); fleetgate records "
        f"{'arrive serialised' if args.serialized else 'serialised by the sink'}"
        f"{', data JSON made beforehand as by the spool' if args.spooled else ''}\n"
    )
    print(
        "| sink | bare records/s | fleetgate records/s | fleetgate/bare "
        "| CPU us/record, bare / fleetgate | backend counts |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sinks", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000, help="runner max_batch")
    parser.add_argument("--submission", type=int, default=10, help="records per submit()")
    parser.add_argument("--repeat", type=int, default=1, help="fleetgate/bare pairs per sink")
    parser.add_argument("--no-bare", action="store_true", help="fleetgate runs only")
    made = parser.add_mutually_exclusive_group()
    made.add_argument(
        "--serialized",
        action="store_true",
        help="fleetgate's records arrive with their JSON form already made (outside the "
        "timing, as the bare client's payloads are); default: the sink serialises them",
    )
    made.add_argument(
        "--spooled",
        action="store_true",
        help="fleetgate's records arrive with their data JSON made (outside the timing), as "
        "the spool's encoding leaves them in production; the sink makes the rest",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="callgrind instructions per record of each side's timed part (default sink: zmq)",
    )
    parser.add_argument(
        "--measure-sizes", type=int, nargs=2, default=(2000, 12000), metavar=("SMALL", "LARGE"),
        help="the two record counts --measure runs each stage at",
    )
    parser.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage and len(args.sinks) != 1:
        parser.error("--stage runs one sink")
    return args


ARGS = argparse.Namespace(batch=1000, stage=None)  # replaced by the command line in __main__

if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.measure:
        sys.exit(measure(ARGS))
    try:
        import uvloop

        sys.exit(uvloop.run(main(ARGS)))
    except ImportError:
        sys.exit(asyncio.run(main(ARGS)))
